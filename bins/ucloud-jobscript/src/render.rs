//! From UCloud jobs to Slurm batch scripts: the checks and the rendering of
//! ucloud-im-jobs(7), with no side effect. Every value from the request ends up
//! single-quoted in the script (or refused); only the site's own names (partition,
//! account, QoS, checked to be plain) and numbers go into `#SBATCH` lines unquoted.

pub use crate::plain::Refusal;
use crate::plain::{has_dot_component, is_plain_base, is_slurm_name, tojson};
use crate::projects::{self, Workspace};
use serde_json::{Map, Value};
use ucloud_wire::record::Drive;

/// What the site and the caller contribute.
pub struct Site<'a> {
    /// `products/jobs.json`'s `products`.
    pub products: &'a [Value],
    /// `jobs/applications.json`'s `applications`.
    pub applications: &'a [Value],
    /// The drive table rows of the calling UCloud user.
    pub drives: &'a [Drive],
    pub user: &'a str,
    /// The local account the jobs are submitted as (the process's own).
    pub local: &'a str,
    /// ucloud-project's table, when the site has one.
    pub projects: Option<&'a Value>,
    /// The `--comment` every job carries, so that ucloud-im's jobs are found again.
    pub tag: &'a str,
}

/// One job, ready to submit.
#[derive(Debug, PartialEq, Eq)]
pub struct Planned {
    pub id: String,
    pub folder: String,
    pub script: String,
    /// The folder is in a project drive (`Workspace::shared`): made under the
    /// drive's root-owned sticky `ucloud-jobs`, with umask 027, and submitted with
    /// `SLURM_UMASK=0027`.
    pub shared: bool,
}

fn bad_job(why: String) -> Refusal {
    Refusal {
        status: 400,
        code: "BAD_JOB",
        why,
    }
}

/// Every job of the request, or the first refusal (then nothing is to be made).
pub fn plan(request: &Value, site: &Site) -> Result<Vec<Planned>, Refusal> {
    let items = match request.get("items") {
        Some(Value::Array(items)) if !items.is_empty() => items,
        _ => {
            return Err(Refusal {
                status: 400,
                code: "BAD_REQUEST",
                why: "expected {\"items\":[Job,...]} with at least one job".into(),
            })
        }
    };
    let home = site
        .drives
        .iter()
        .find(|d| d.is_home())
        .ok_or_else(|| Refusal {
            status: 400,
            code: "NO_HOME_DRIVE",
            why: format!("{} has no home drive on this provider", site.user),
        })?;
    let base = match home.base.as_str() {
        b if is_plain_base(b) => b.to_string(),
        b => {
            return Err(Refusal {
                status: 500,
                code: "SITE_CONFIG",
                why: format!(
                    "home drive base {} has characters a batch script header cannot carry",
                    tojson(&Value::String(b.to_string()))
                ),
            })
        }
    };
    items
        .iter()
        .map(|job| {
            let project = projects::project_of(job).map_err(bad_job)?;
            let job = Job::new(job, site, &base).map_err(bad_job)?;
            let product = job.product().map_err(bad_job)?;
            let category = field(product, "category").as_str();
            let workspace =
                projects::workspace(site.projects, project.as_deref(), category, site.local)?;
            job.render(product, &workspace).map_err(bad_job)
        })
        .collect()
}

fn is_job_id(id: &str) -> bool {
    let mut bytes = id.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id.len() <= 64
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A value as text: strings as they are, whole numbers without a fraction, the
/// rest as JSON.
fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => n.to_string(),
        },
        other => tojson(other),
    }
}

/// Present and neither null nor false (what a missing setting looks like).
fn given(v: Option<&Value>) -> Option<&Value> {
    v.filter(|v| !matches!(v, Value::Null | Value::Bool(false)))
}

/// One shell word: single-quoted, `'` written as `'\''`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A whole number in 1..1000000.
fn positive(v: &Value, what: &str) -> Result<u64, String> {
    match v.as_f64() {
        Some(f) if (1.0..1_000_000.0).contains(&f) && f.fract() == 0.0 => Ok(f as u64),
        _ => Err(format!(
            "{what} must be a positive integer, got {}",
            tojson(v)
        )),
    }
}

fn pad(n: u64) -> String {
    format!("{n:02}")
}

/// Slurm's `days-hh:mm:ss` of UCloud's SimpleDuration.
fn duration(d: &Value) -> Result<String, String> {
    let part = |key: &str| -> Result<f64, String> {
        match given(d.get(key)) {
            None => Ok(0.0),
            Some(v) => v.as_f64().ok_or_else(|| {
                format!("cannot read the job: timeAllocation.{key} is not a number")
            }),
        }
    };
    let total = (part("hours")? * 60.0 + part("minutes")?) * 60.0 + part("seconds")?;
    if !(total >= 1.0 && total.fract() == 0.0 && total < 1e15) {
        return Err("timeAllocation must be a positive duration".into());
    }
    let t = total as u64;
    Ok(format!(
        "{}-{}:{}:{}",
        t / 86400,
        pad(t % 86400 / 3600),
        pad(t % 3600 / 60),
        pad(t % 60)
    ))
}

/// One argument of the command: literal text (quoted) or a variable the job's
/// environment supplies (`"${NAME}"`).
enum Arg {
    Lit(String),
    Env(String),
}

struct Job<'a> {
    job: &'a Value,
    site: &'a Site<'a>,
    base: &'a str,
    id: String,
    parameters: Map<String, Value>,
    defs: Map<String, Value>,
}

fn field<'v>(v: &'v Value, key: &str) -> &'v Value {
    v.get(key).unwrap_or(&Value::Null)
}

impl<'a> Job<'a> {
    fn new(job: &'a Value, site: &'a Site<'a>, base: &'a str) -> Result<Job<'a>, String> {
        let id = given(job.get("id")).map(text_of).unwrap_or_default();
        if !is_job_id(&id) {
            return Err(format!(
                "job id {} is not a UCloud job id",
                tojson(&Value::String(id))
            ));
        }
        let spec = field(job, "specification");
        let parameters = match given(spec.get("parameters")) {
            None => Map::new(),
            Some(Value::Object(p)) => p.clone(),
            Some(_) => {
                return Err("cannot read the job: specification.parameters is not an object".into())
            }
        };
        let invocation = field(
            field(field(job, "status"), "resolvedApplication"),
            "invocation",
        );
        let defs = match given(invocation.get("parameters")) {
            None => Map::new(),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(|d| Some((d.get("name")?.as_str()?.to_string(), d.clone())))
                .collect(),
            Some(_) => {
                return Err(
                    "cannot read the job: the application's parameters are not a list".into(),
                )
            }
        };
        Ok(Job {
            job,
            site,
            base,
            id,
            parameters,
            defs,
        })
    }

    /// The value of a parameter as UCloud sent it, else the application's default.
    fn value(&self, name: &str) -> Option<Value> {
        if let Some(v) = given(self.parameters.get(name)) {
            return Some(v.clone());
        }
        let def = self.defs.get(name)?;
        let default = given(def.get("defaultValue"))?;
        if default.get("value").is_some() || default.get("path").is_some() {
            return Some(default.clone());
        }
        let mut v = Map::new();
        v.insert("type".into(), field(def, "type").clone());
        v.insert("value".into(), default.clone());
        Some(Value::Object(v))
    }

    /// A UCloud path `/<driveId>/rest` in one of the caller's drives, as a local path.
    fn local_path(&self, p: &Value) -> Result<String, String> {
        let p = text_of(p);
        let not_drive_path = || {
            format!(
                "file path {} is not /<driveId>/...",
                tojson(&Value::String(p.clone()))
            )
        };
        let rest_of_p = p.strip_prefix('/').ok_or_else(not_drive_path)?;
        let (drive, rest) = match rest_of_p.find('/') {
            Some(i) => (&rest_of_p[..i], &rest_of_p[i..]),
            None => (rest_of_p, ""),
        };
        if drive.is_empty() || rest.contains('\n') {
            return Err(not_drive_path());
        }
        let base = self
            .site
            .drives
            .iter()
            .find(|d| d.id.as_str() == drive)
            .map(|d| d.base.as_str())
            .ok_or_else(|| {
                format!(
                    "file path {} is not in one of your drives",
                    tojson(&Value::String(p.clone()))
                )
            })?;
        if has_dot_component(rest) {
            return Err(format!(
                "file path {} has . or .. components",
                tojson(&Value::String(p.clone()))
            ));
        }
        Ok(format!("{base}{rest}"))
    }

    /// The text one parameter contributes as one argument (None: not given).
    fn text(&self, name: &str) -> Result<Option<String>, String> {
        let Some(v) = self.value(name) else {
            return Ok(None);
        };
        let value = field(&v, "value");
        match field(&v, "type").as_str() {
            Some("text" | "integer" | "floating_point" | "enumeration") => match value {
                Value::String(_) | Value::Number(_) => Ok(Some(text_of(value))),
                _ => Err(format!("parameter {name} has no scalar value")),
            },
            Some("boolean") => {
                let def = self.defs.get(name).unwrap_or(&Value::Null);
                let (key, fallback) = if value == &Value::Bool(true) {
                    ("trueValue", "true")
                } else {
                    ("falseValue", "false")
                };
                Ok(Some(
                    given(def.get(key))
                        .map(text_of)
                        .unwrap_or_else(|| fallback.into()),
                ))
            }
            Some("file") => self.local_path(field(&v, "path")).map(Some),
            _ => Err(format!(
                "parameter {name} has type {}, which Slurm jobs here do not support",
                tojson(field(&v, "type"))
            )),
        }
    }

    /// The arguments of one part of the application's invocation.
    fn args(&self, part: &Value) -> Result<Vec<Arg>, String> {
        let text = |key: &str| given(part.get(key)).map(text_of).filter(|s| !s.is_empty());
        match field(part, "type").as_str() {
            Some("word") => Ok(vec![Arg::Lit(text_of(field(part, "word")))]),
            Some("var") => {
                let mut values = Vec::new();
                for name in field(part, "variableNames")
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    let Some(name) = name.as_str() else {
                        return Err("cannot read the job: a variable name is not text".into());
                    };
                    values.extend(self.text(name)?);
                }
                if values.is_empty() {
                    return Ok(Vec::new());
                }
                let glued = |key: &str| given(part.get(key)).is_some();
                let prefix = given(part.get("prefixVariable"))
                    .map(text_of)
                    .unwrap_or_default();
                let suffix = given(part.get("suffixVariable"))
                    .map(text_of)
                    .unwrap_or_default();
                let mut out: Vec<String> = text("prefixGlobal").into_iter().collect();
                for x in values {
                    let mut words = if glued("isPrefixVariablePartOfArg") {
                        vec![format!("{prefix}{x}")]
                    } else if prefix.is_empty() {
                        vec![x]
                    } else {
                        vec![prefix.clone(), x]
                    };
                    if glued("isSuffixVariablePartOfArg") {
                        if let Some(last) = words.last_mut() {
                            last.push_str(&suffix);
                        }
                    } else if !suffix.is_empty() {
                        words.push(suffix.clone());
                    }
                    out.extend(words);
                }
                out.extend(text("suffixGlobal"));
                Ok(out.into_iter().map(Arg::Lit).collect())
            }
            Some("bool_flag") => {
                let on = field(part, "variableName")
                    .as_str()
                    .and_then(|n| self.value(n))
                    .is_some_and(|v| v.get("value") == Some(&Value::Bool(true)));
                Ok(if on {
                    vec![Arg::Lit(text_of(field(part, "flag")))]
                } else {
                    Vec::new()
                })
            }
            Some("env") => match field(part, "variable").as_str() {
                Some(name) if is_env_name(name) => Ok(vec![Arg::Env(name.to_string())]),
                _ => Err("env invocation names no valid variable".into()),
            },
            _ => Err(format!(
                "invocation part of type {} is not supported",
                tojson(field(part, "type"))
            )),
        }
    }

    /// The site's row of the job's product.
    fn product(&self) -> Result<&'a Value, String> {
        let pid = field(field(field(self.job, "specification"), "product"), "id");
        self.site
            .products
            .iter()
            .find(|p| field(p, "id") == pid && !pid.is_null())
            .ok_or_else(|| format!("product {} is not offered by this provider", tojson(pid)))
    }

    /// The batch script of the job: the product decides the partition, account and
    /// QoS, the workspace (the job's owner) may replace the account and the folder.
    fn render(self, product: &Value, workspace: &Workspace) -> Result<Planned, String> {
        let job = self.job;
        let spec = field(job, "specification");
        let status = field(job, "status");
        let app = field(status, "resolvedApplication");
        let rp = field(status, "resolvedProduct");
        let pid = field(field(spec, "product"), "id");

        // Only applications the site enabled, at the version UCloud asks for.
        let appref = field(spec, "application");
        let (name, version) = (field(appref, "name"), field(appref, "version"));
        let enabled = self
            .site
            .applications
            .iter()
            .find(|a| field(a, "name") == name && text_of(field(a, "version")) == text_of(version))
            .ok_or_else(|| {
                format!(
                    "application {} version {} is not enabled on this provider",
                    tojson(name),
                    tojson(version)
                )
            })?;

        let invocation = match field(field(app, "invocation"), "invocation") {
            Value::Array(parts) if !parts.is_empty() => parts,
            _ => {
                return Err(
                    "the job has no status.resolvedApplication.invocation.invocation".into(),
                )
            }
        };
        let mut words = Vec::new();
        for part in invocation {
            for arg in self.args(part)? {
                words.push(match arg {
                    Arg::Lit(text) => shell_quote(&text),
                    Arg::Env(name) => format!("\"${{{name}}}\""),
                });
            }
        }
        let command = words.join(" ");

        // Resources: a product row may say nothing about memory; then Slurm decides.
        let nodes = positive(
            given(spec.get("replicas")).unwrap_or(&Value::from(1)),
            "replicas",
        )?;
        let cpus = positive(
            given(rp.get("cpu")).unwrap_or(&Value::from(1)),
            "resolvedProduct.cpu",
        )?;
        let memory = given(rp.get("memoryInGigs"))
            .map(|m| positive(m, "resolvedProduct.memoryInGigs"))
            .transpose()?;
        let time = given(spec.get("timeAllocation"))
            .map(duration)
            .transpose()?;
        let slurm = field(product, "slurm");
        let setting = |key: &str| given(slurm.get(key));
        let mut sbatch_names = Vec::new();
        for key in ["partition", "account", "qos"] {
            // The owner's account (checked by projects.rs) before the product's.
            if let ("account", Some(account)) = (key, &workspace.account) {
                sbatch_names.push((key, account.clone()));
                continue;
            }
            match setting(key) {
                None => {}
                Some(Value::String(s)) if is_slurm_name(s) => sbatch_names.push((key, s.clone())),
                Some(_) => {
                    return Err(format!(
                        "site config: partition/account/qos of product {} must be plain names",
                        text_of(pid)
                    ))
                }
            }
        }
        let base = workspace.drive.as_deref().unwrap_or(self.base);
        let folder = format!("{base}/ucloud-jobs/{}", self.id);
        let id = &self.id;
        let mut lines = vec![
            "#!/bin/bash".to_string(),
            format!(
                "# UCloud job {id}: {} {}, product {}. Written by ucloud-im jobs.create.",
                text_of(name),
                text_of(version),
                text_of(pid)
            ),
            format!("#SBATCH --job-name={id}"),
            format!("#SBATCH --comment={}", self.site.tag),
            format!("#SBATCH --chdir={folder}"),
            format!("#SBATCH --output={folder}/stdout.txt"),
            format!("#SBATCH --error={folder}/stderr.txt"),
            format!("#SBATCH --nodes={nodes}"),
            format!("#SBATCH --cpus-per-task={cpus}"),
        ];
        lines.extend(memory.map(|m| format!("#SBATCH --mem={m}G")));
        lines.extend(time.map(|t| format!("#SBATCH --time={t}")));
        lines.extend(
            sbatch_names
                .iter()
                .map(|(key, value)| format!("#SBATCH --{key}={value}")),
        );
        lines.push(String::new());
        lines.push("set -e".into());
        for module in given(enabled.get("modules"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            lines.push(format!("module load {}", shell_quote(&text_of(module))));
        }
        lines.push(command);
        Ok(Planned {
            id: self.id.clone(),
            folder,
            script: lines.join("\n") + "\n",
            shared: workspace.shared,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn drive(id: &str, kind: &str, base: &str) -> Drive {
        let mut d = Drive::home(
            ucloud_wire::names::DriveId::new(id).unwrap(),
            ucloud_wire::names::UcloudName::new("Ann#1").unwrap(),
            ucloud_wire::names::LocalName::new("ann").unwrap(),
            base.into(),
        );
        d.kind = kind.into();
        d
    }

    fn site_tables() -> (Vec<Value>, Vec<Value>, Vec<Drive>) {
        (
            vec![
                json!({"id": "cpu", "category": "cpu",
                       "slurm": {"partition": "small", "account": null, "qos": "normal"}}),
                json!({"id": "gpu", "category": "gpu",
                       "slurm": {"partition": "gpu", "account": "gpu-pool", "qos": null}}),
            ],
            vec![json!({"name": "shell", "version": "1", "modules": ["gcc/12"]})],
            vec![
                drive("7", "home", "/home/ann"),
                // A project's drive the caller's groups let them use.
                Drive::project(
                    ucloud_wire::names::DriveId::new("8").unwrap(),
                    "p-1".into(),
                    200001,
                    "/proj/x".into(),
                    "X".into(),
                ),
            ],
        )
    }

    fn job(id: Value, invocation: Value, parameters: Value) -> Value {
        json!({"id": id, "specification": {
            "product": {"id": "cpu"}, "application": {"name": "shell", "version": 1},
            "replicas": 2, "parameters": parameters,
            "timeAllocation": {"hours": 25, "minutes": 1, "seconds": 2}},
          "status": {"resolvedApplication": {"invocation": {"invocation": invocation,
            "parameters": [{"name": "opt", "type": "boolean", "trueValue": "on"}]}},
            "resolvedProduct": {"cpu": 4, "memoryInGigs": 8}}})
    }

    fn run(request: Value) -> Result<Vec<Planned>, Refusal> {
        run_with(request, None)
    }

    fn run_with(request: Value, projects: Option<&Value>) -> Result<Vec<Planned>, Refusal> {
        let (products, applications, drives) = site_tables();
        let site = Site {
            products: &products,
            applications: &applications,
            drives: &drives,
            user: "Ann#1",
            local: "ann",
            projects,
            tag: "ucloud-im",
        };
        plan(&request, &site)
    }

    #[test]
    fn the_script_carries_the_documented_options_and_a_quoted_command() {
        let invocation = json!([
            {"type": "word", "word": "run"},
            {"type": "var", "variableNames": ["in"], "prefixVariable": "--in=",
             "isPrefixVariablePartOfArg": true},
            {"type": "bool_flag", "variableName": "opt", "flag": "-v"},
            {"type": "var", "variableNames": ["opt"]},
            {"type": "env", "variable": "SLURM_JOB_ID"}
        ]);
        let params = json!({"in": {"type": "file", "path": "/8/data/a b"},
                            "opt": {"type": "boolean", "value": true}});
        let jobs = run(json!({"items": [job(json!("j1"), invocation, params)]})).unwrap();
        assert_eq!(jobs[0].folder, "/home/ann/ucloud-jobs/j1");
        assert_eq!(
            jobs[0].script,
            "#!/bin/bash\n# UCloud job j1: shell 1, product cpu. Written by ucloud-im jobs.create.\n\
             #SBATCH --job-name=j1\n#SBATCH --comment=ucloud-im\n\
             #SBATCH --chdir=/home/ann/ucloud-jobs/j1\n\
             #SBATCH --output=/home/ann/ucloud-jobs/j1/stdout.txt\n\
             #SBATCH --error=/home/ann/ucloud-jobs/j1/stderr.txt\n\
             #SBATCH --nodes=2\n#SBATCH --cpus-per-task=4\n#SBATCH --mem=8G\n\
             #SBATCH --time=1-01:01:02\n#SBATCH --partition=small\n#SBATCH --qos=normal\n\
             \nset -e\nmodule load 'gcc/12'\n\
             'run' '--in=/proj/x/data/a b' '-v' 'on' \"${SLURM_JOB_ID}\"\n"
        );
    }

    #[test]
    fn hostile_values_are_one_quoted_word_each() {
        let values = [
            "$(id)",
            "`id`",
            "'; id; '",
            "a\nb",
            "--help",
            "${HOME} * \\",
        ];
        let mut params = Map::new();
        let mut invocation = vec![json!({"type": "word", "word": "printf"})];
        for (i, v) in values.iter().enumerate() {
            params.insert(format!("p{i}"), json!({"type": "text", "value": v}));
            invocation.push(json!({"type": "var", "variableNames": [format!("p{i}")]}));
        }
        let jobs =
            run(json!({"items": [job(json!("j2"), json!(invocation), Value::Object(params))]}))
                .unwrap();
        let command = jobs[0]
            .script
            .lines()
            .skip_while(|l| *l != "set -e")
            .nth(2)
            .unwrap_or("");
        // The newline value spans two lines of the script, inside its quotes.
        let tail: String = jobs[0]
            .script
            .split("set -e\nmodule load 'gcc/12'\n")
            .nth(1)
            .unwrap()
            .into();
        assert_eq!(
            tail,
            "'printf' '$(id)' '`id`' ''\\''; id; '\\''' 'a\nb' '--help' '${HOME} * \\'\n"
        );
        assert!(command.starts_with("'printf'"));
    }

    #[test]
    fn refusals_name_the_problem_and_the_first_one_wins() {
        let ok = job(
            json!("ok"),
            json!([{"type": "word", "word": "true"}]),
            json!({}),
        );
        let cases = [
            (json!({"items": []}), 400, "BAD_REQUEST", "at least one job"),
            (
                json!({"items": [ok.clone(), job(json!("../x"), json!([]), json!({}))]}),
                400,
                "BAD_JOB",
                "job id \"../x\" is not a UCloud job id",
            ),
            (
                json!({"items": [job(json!("j"), json!([{"type": "magic"}]), json!({}))]}),
                400,
                "BAD_JOB",
                "invocation part of type \"magic\"",
            ),
            (
                json!({"items": [job(json!("j"), json!([{"type": "env", "variable": "A;B"}]), json!({}))]}),
                400,
                "BAD_JOB",
                "no valid variable",
            ),
            (
                json!({"items": [job(json!("j"), json!([{"type": "var", "variableNames": ["f"]}]),
                json!({"f": {"type": "file", "path": "/7/../../etc/shadow"}}))]}),
                400,
                "BAD_JOB",
                "has . or .. components",
            ),
            (
                json!({"items": [job(json!("j"), json!([{"type": "var", "variableNames": ["f"]}]),
                json!({"f": {"type": "file", "path": "/9/x"}}))]}),
                400,
                "BAD_JOB",
                "not in one of your drives",
            ),
            (
                json!({"items": [job(json!("j"), json!([{"type": "var", "variableNames": ["f"]}]),
                json!({"f": {"type": "peer", "value": "x"}}))]}),
                400,
                "BAD_JOB",
                "type \"peer\"",
            ),
        ];
        for (request, status, code, why) in cases {
            let r = run(request.clone()).unwrap_err();
            assert_eq!((r.status, r.code), (status, code), "{request}");
            assert!(r.why.contains(why), "{} does not say {why:?}", r.why);
        }
        let mut bad = ok;
        bad["specification"]["replicas"] = json!(0);
        assert!(run(json!({"items": [bad]}))
            .unwrap_err()
            .why
            .contains("replicas must be a positive integer, got 0"));
    }

    #[test]
    fn a_home_base_a_header_cannot_carry_is_the_sites_error() {
        let (products, applications, _) = site_tables();
        let drives = [drive("7", "home", "/home/a b")];
        let site = Site {
            products: &products,
            applications: &applications,
            drives: &drives,
            user: "Ann#1",
            local: "ann",
            projects: None,
            tag: "t",
        };
        let r = plan(&json!({"items": [{"id": "j"}]}), &site).unwrap_err();
        assert_eq!((r.status, r.code), (500, "SITE_CONFIG"));
        let site = Site {
            drives: &[],
            ..site
        };
        assert_eq!(
            plan(&json!({"items": [{"id": "j"}]}), &site)
                .unwrap_err()
                .code,
            "NO_HOME_DRIVE"
        );
    }

    fn projects_table() -> Value {
        json!({
            "projects": {
                "p-1": {"group": "ucp-p1", "drive": "/srv/projects/ucp-p1",
                        "accounts": {"cpu": "ucp-p1_cpu", "gpu": "ucp-p1_gpu"},
                        "members": ["ann", "bob"]},
                "p-2": {"group": "ucp-p2", "drive": null,
                        "accounts": {"cpu": "ucp-p2_cpu"}, "members": ["ann"]},
                "p-3": {"drive": "/srv/x/../y", "accounts": {"cpu": "ucp-p3_cpu"},
                        "members": ["ann"]},
                "p-4": {"accounts": {"cpu": "ucp-p4 cpu"}, "members": ["ann"]},
                "p-5": {"accounts": {"cpu": "ucp-p5_cpu"}, "members": ["bob"]}
            },
            "users": {"ann": {"accounts": {"cpu": "ucu-ann_cpu"}}}
        })
    }

    fn owned_job(id: &str, product: &str, project: Value) -> Value {
        let mut j = job(
            json!(id),
            json!([{"type": "word", "word": "true"}]),
            json!({}),
        );
        j["specification"]["product"]["id"] = json!(product);
        j["owner"] = json!({"createdBy": "Ann#1", "project": project});
        j
    }

    fn header(script: &str, key: &str) -> Option<String> {
        script
            .lines()
            .find_map(|l| l.strip_prefix(&format!("#SBATCH --{key}=")))
            .map(str::to_string)
    }

    #[test]
    fn a_project_job_runs_under_the_projects_account_in_its_drive() {
        let table = projects_table();
        let jobs = run_with(
            json!({"items": [owned_job("j1", "cpu", json!("p-1")),
                             owned_job("j2", "gpu", json!("p-1"))]}),
            Some(&table),
        )
        .unwrap();
        assert_eq!(jobs[0].folder, "/srv/projects/ucp-p1/ucloud-jobs/j1");
        assert!(jobs[0].shared && jobs[1].shared);
        let s = &jobs[0].script;
        assert_eq!(header(s, "account").as_deref(), Some("ucp-p1_cpu"));
        assert_eq!(
            header(s, "output").as_deref(),
            Some("/srv/projects/ucp-p1/ucloud-jobs/j1/stdout.txt")
        );
        assert_eq!(
            header(s, "chdir").as_deref(),
            Some("/srv/projects/ucp-p1/ucloud-jobs/j1")
        );
        // The project's account replaces the product's own.
        assert_eq!(
            header(&jobs[1].script, "account").as_deref(),
            Some("ucp-p1_gpu")
        );
        assert_eq!(s.matches("--account=").count(), 1);
        // No drive: the caller's home, private like a personal job.
        let jobs = run_with(
            json!({"items": [owned_job("j3", "cpu", json!("p-2"))]}),
            Some(&table),
        )
        .unwrap();
        assert_eq!(jobs[0].folder, "/home/ann/ucloud-jobs/j3");
        assert!(!jobs[0].shared);
        assert_eq!(
            header(&jobs[0].script, "account").as_deref(),
            Some("ucp-p2_cpu")
        );
    }

    #[test]
    fn a_personal_job_takes_a_personal_account_when_the_table_has_one() {
        let table = projects_table();
        let jobs = run_with(
            json!({"items": [owned_job("j1", "cpu", Value::Null),
                             owned_job("j2", "gpu", json!(""))]}),
            Some(&table),
        )
        .unwrap();
        assert_eq!(jobs[0].folder, "/home/ann/ucloud-jobs/j1");
        assert!(!jobs[0].shared && !jobs[1].shared);
        assert_eq!(
            header(&jobs[0].script, "account").as_deref(),
            Some("ucu-ann_cpu")
        );
        // No personal account for gpu: the product's.
        assert_eq!(
            header(&jobs[1].script, "account").as_deref(),
            Some("gpu-pool")
        );
        // No table: as before.
        let jobs = run(json!({"items": [owned_job("j1", "cpu", Value::Null)]})).unwrap();
        assert_eq!(header(&jobs[0].script, "account"), None);
    }

    #[test]
    fn project_jobs_are_refused_for_outsiders_and_hostile_tables() {
        let table = projects_table();
        let cases = [
            (json!("p-9"), "cpu", Some(&table), 403, "NOT_ON_SITE"),
            (json!("p-5"), "cpu", Some(&table), 403, "NOT_A_MEMBER"),
            (json!("p-2"), "gpu", Some(&table), 403, "NO_ALLOCATION"),
            (json!("p-3"), "cpu", Some(&table), 500, "SITE_CONFIG"),
            (json!("p-4"), "cpu", Some(&table), 500, "SITE_CONFIG"),
            (json!("p-1"), "cpu", None, 400, "NO_PROJECTS"),
            (json!(7), "cpu", Some(&table), 400, "BAD_JOB"),
            (json!("p-1"), "nope", Some(&table), 400, "BAD_JOB"),
        ];
        for (project, product, table, status, code) in cases {
            // The refused job comes second: nothing of the first is made either.
            let request = json!({"items": [owned_job("ok", "cpu", json!("p-1")),
                                           owned_job("j", product, project.clone())]});
            let r = run_with(request, table).unwrap_err();
            assert_eq!((r.status, r.code), (status, code), "{project}: {}", r.why);
        }
    }

    #[test]
    fn quoting_survives_the_shell() {
        for s in ["plain", "it's", "''", "$(x)", "a\nb", ""] {
            let out = std::process::Command::new("sh")
                .args(["-c", &format!("printf %s {}", shell_quote(s))])
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), s);
        }
    }
}
