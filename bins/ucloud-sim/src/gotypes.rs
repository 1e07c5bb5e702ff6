//! The Go types of the calls the simulator serves, as [`Ty`] values for
//! [`crate::gojson`]. Each names its type in UCloud's repository (files under
//! `provider-integration/shared/pkg/`); embedded structs are flattened the way Go
//! promotes their fields. doc/contracts.md lists which call reads which type.

use crate::gojson::Ty;

/// `fnd.BulkRequest[T]` (foundation/core.go): one field, `items []T`.
macro_rules! bulk {
    ($item:expr) => {
        Ty::Struct(&[("items", &Ty::Slice(&$item))])
    };
}

/// `apm.ProductReference` (accounting/products.go).
pub static PRODUCT_REFERENCE: Ty = Ty::Struct(&[
    ("id", &Ty::Str),
    ("category", &Ty::Str),
    ("provider", &Ty::Str),
]);

/// `apm.AccountingUnit` (accounting/products.go).
pub static ACCOUNTING_UNIT: Ty = Ty::Struct(&[
    ("name", &Ty::Str),
    ("namePlural", &Ty::Str),
    ("floatingPoint", &Ty::Bool),
    ("displayFrequencySuffix", &Ty::Bool),
]);

/// `apm.ProductCategory` (accounting/products.go).
pub static PRODUCT_CATEGORY: Ty = Ty::Struct(&[
    ("name", &Ty::Str),
    ("provider", &Ty::Str),
    ("productType", &Ty::Str),
    ("accountingUnit", &ACCOUNTING_UNIT),
    ("accountingFrequency", &Ty::Str),
    ("freeToUse", &Ty::Bool),
    ("allowSubAllocations", &Ty::Bool),
]);

/// `apm.Fraction` (accounting/products.go).
pub static FRACTION: Ty = Ty::Struct(&[("numerator", &Ty::Int), ("denominator", &Ty::Int)]);

/// `apm.ProductV2` (accounting/products.go), the item of `products.create`.
pub static PRODUCT_V2: Ty = Ty::Struct(&[
    ("type", &Ty::Str),
    ("category", &PRODUCT_CATEGORY),
    ("name", &Ty::Str),
    ("description", &Ty::Str),
    ("productType", &Ty::Str),
    ("price", &Ty::Int),
    ("fraction", &FRACTION),
    ("hiddenInGrantApplications", &Ty::Bool),
    ("usage", &Ty::Opt(&Ty::Int)),
    ("cpu", &Ty::Int),
    ("cpuModel", &Ty::Str),
    ("memoryInGigs", &Ty::Int),
    ("memoryModel", &Ty::Str),
    ("gpu", &Ty::Int),
    ("gpuModel", &Ty::Str),
    ("balance", &Ty::Int),
    ("maxUsableBalance", &Ty::Int),
    ("pricePerUnit", &Ty::Int),
]);

/// `products.create` (`apm.ProductsCreate`): `fnd.BulkRequest[apm.ProductV2]`.
pub static PRODUCTS_CREATE: Ty = bulk!(PRODUCT_V2);

/// `orc.DriveSpecification` (orchestrators/drives.go), with
/// `orc.ResourceSpecification` (orchestrators/resource.go) embedded.
pub static DRIVE_SPECIFICATION: Ty = Ty::Struct(&[
    ("title", &Ty::Str),
    ("product", &PRODUCT_REFERENCE),
    ("labels", &Ty::Map(&Ty::Str)),
]);

/// `orc.SimpleDuration` (orchestrators/jobs.go).
pub static SIMPLE_DURATION: Ty = Ty::Struct(&[
    ("hours", &Ty::Int),
    ("minutes", &Ty::Int),
    ("seconds", &Ty::Int),
]);

/// `orc.JobSpecification` (orchestrators/jobs.go), `orc.ResourceSpecification`
/// embedded. Parameter values (`AppParameterValue`) are taken as they come.
pub static JOB_SPECIFICATION: Ty = Ty::Struct(&[
    ("product", &PRODUCT_REFERENCE),
    ("labels", &Ty::Map(&Ty::Str)),
    (
        "application",
        &Ty::Struct(&[("name", &Ty::Str), ("version", &Ty::Str)]),
    ),
    ("name", &Ty::Str),
    ("hostname", &Ty::Opt(&Ty::Str)),
    ("replicas", &Ty::Int),
    ("allowDuplicateJob", &Ty::Bool),
    ("parameters", &Ty::Map(&Ty::Any)),
    ("resources", &Ty::Slice(&Ty::Any)),
    ("timeAllocation", &Ty::Opt(&SIMPLE_DURATION)),
    ("openedFile", &Ty::Str),
    ("restartOnExit", &Ty::Bool),
    ("sshEnabled", &Ty::Bool),
]);

/// `orc.ProviderRegisteredResource[orc.DriveSpecification]` (resource.go).
pub static REGISTERED_DRIVE: Ty = Ty::Struct(&[
    ("spec", &DRIVE_SPECIFICATION),
    ("providerGeneratedId", &Ty::Opt(&Ty::Str)),
    ("createdBy", &Ty::Opt(&Ty::Str)),
    ("project", &Ty::Opt(&Ty::Str)),
    ("projectAllRead", &Ty::Bool),
    ("projectAllWrite", &Ty::Bool),
]);

/// `files/collections/control/register` (`orc.DrivesControlRegister`).
pub static DRIVES_REGISTER: Ty = bulk!(REGISTERED_DRIVE);

/// `orc.ProviderRegisteredResource[orc.JobSpecification]` (resource.go).
pub static REGISTERED_JOB: Ty = Ty::Struct(&[
    ("spec", &JOB_SPECIFICATION),
    ("providerGeneratedId", &Ty::Opt(&Ty::Str)),
    ("createdBy", &Ty::Opt(&Ty::Str)),
    ("project", &Ty::Opt(&Ty::Str)),
    ("projectAllRead", &Ty::Bool),
    ("projectAllWrite", &Ty::Bool),
]);

/// `jobs/control/register` (`orc.JobsControlRegister`).
pub static JOBS_REGISTER: Ty = bulk!(REGISTERED_JOB);

/// `orc.JobUpdate` (orchestrators/jobs.go).
pub static JOB_UPDATE: Ty = Ty::Struct(&[
    ("state", &Ty::Opt(&Ty::Str)),
    ("outputFolder", &Ty::Opt(&Ty::Str)),
    ("status", &Ty::Opt(&Ty::Str)),
    ("expectedState", &Ty::Opt(&Ty::Str)),
    ("expectedDifferentState", &Ty::Opt(&Ty::Bool)),
    ("newTimeAllocation", &Ty::Opt(&Ty::Int)),
    ("allowRestart", &Ty::Opt(&Ty::Bool)),
    ("resourceList", &Ty::Opt(&Ty::Slice(&Ty::Any))),
    ("timestamp", &Ty::Timestamp),
]);

/// `orc.ResourceUpdateAndId[orc.JobUpdate]` (resource.go).
pub static JOB_UPDATE_AND_ID: Ty = Ty::Struct(&[("id", &Ty::Str), ("update", &JOB_UPDATE)]);

/// `jobs/control/update` (`orc.JobsControlAddUpdate`).
pub static JOBS_UPDATE: Ty = bulk!(JOB_UPDATE_AND_ID);

/// `orc.ResourceOwner` (resource.go).
pub static RESOURCE_OWNER: Ty =
    Ty::Struct(&[("createdBy", &Ty::Str), ("project", &Ty::Opt(&Ty::Str))]);

/// `orc.Job` (orchestrators/jobs.go), `orc.Resource` embedded: what a job UCloud
/// creates must have right. Status, updates and output are taken as they come.
pub static JOB: Ty = Ty::Struct(&[
    ("id", &Ty::Str),
    ("createdAt", &Ty::Any),
    ("owner", &RESOURCE_OWNER),
    ("permissions", &Ty::Any),
    ("providerGeneratedId", &Ty::Str),
    ("updates", &Ty::Any),
    ("specification", &JOB_SPECIFICATION),
    ("status", &Ty::Any),
    ("output", &Ty::Any),
]);

/// `POST /ucloud/{P}/jobs` as UCloud sends it (`orc.JobsProviderCreate`):
/// `fnd.BulkRequest[orc.Job]`.
pub static JOBS_CREATE: Ty = bulk!(JOB);

/// `orc.ProviderIntegrationCtrlFindByUser` (orchestrators/provider_integration.go).
pub static FIND_BY_USER: Ty = Ty::Struct(&[("username", &Ty::Str)]);

/// `fnd.RefreshToken` (foundation/auth_providers.go).
pub static REFRESH_TOKEN: Ty = Ty::Struct(&[("refreshToken", &Ty::Str)]);

/// `auth/providers/refresh` (`fnd.AuthProvidersRefresh`).
pub static PROVIDERS_REFRESH: Ty = bulk!(REFRESH_TOKEN);

/// `apm.WalletOwner` (accounting/accounting.go).
pub static WALLET_OWNER: Ty = Ty::Struct(&[
    ("type", &Ty::Str),
    ("username", &Ty::Str),
    ("projectId", &Ty::Str),
]);

/// `apm.ReportUsageRequest` (accounting/accounting.go), with
/// `apm.ProductCategoryIdV2` and `apm.ChargeDescription`.
pub static REPORT_USAGE_REQUEST: Ty = Ty::Struct(&[
    ("isDeltaCharge", &Ty::Bool),
    ("owner", &WALLET_OWNER),
    (
        "categoryIdV2",
        &Ty::Struct(&[("name", &Ty::Str), ("provider", &Ty::Str)]),
    ),
    ("usage", &Ty::Int),
    (
        "description",
        &Ty::Struct(&[
            ("scope", &Ty::Opt(&Ty::Str)),
            ("description", &Ty::Opt(&Ty::Str)),
        ]),
    ),
]);

/// `accounting/v2/reportUsage` (`apm.ReportUsage`).
pub static REPORT_USAGE: Ty = bulk!(REPORT_USAGE_REQUEST);

/// `orc.ShareUpdate` (orchestrators/shares.go).
pub static SHARE_UPDATE: Ty = Ty::Struct(&[
    ("shareAvailableAt", &Ty::Opt(&Ty::Str)),
    ("timestamp", &Ty::Timestamp),
    ("status", &Ty::Opt(&Ty::Str)),
]);

/// `orc.ResourceUpdateAndId[orc.ShareUpdate]` (resource.go).
pub static SHARE_UPDATE_AND_ID: Ty = Ty::Struct(&[("id", &Ty::Str), ("update", &SHARE_UPDATE)]);

/// `shares/control/update` (`orc.SharesControlAddUpdate`).
pub static SHARES_UPDATE: Ty = bulk!(SHARE_UPDATE_AND_ID);

/// `POST /sim/shares`, the simulator's own: who shares what with whom, the fields
/// `orc.ShareSpecification` (shares.go) gives `ShareCreate` besides the product,
/// which is the drive's (the web client sends the file's product).
pub static SIM_SHARE: Ty = Ty::Struct(&[
    ("sharedBy", &Ty::Str),
    ("sharedWith", &Ty::Str),
    ("path", &Ty::Str),
    ("permissions", &Ty::Slice(&Ty::Str)),
]);

/// `POST /sim/shares/{id}/permissions`: `orc.SharesUpdatePermissionsRequest`
/// (shares.go) without its `id`, which is the URL's.
pub static SIM_SHARE_PERMISSIONS: Ty = Ty::Struct(&[("permissions", &Ty::Slice(&Ty::Str))]);

/// `fnd.FindByStringId` (foundation/core.go).
pub static FIND_BY_STRING_ID: Ty = Ty::Struct(&[("id", &Ty::Str)]);

/// `fnd.BulkResponse[fnd.FindByStringId]`: the provider's answer to a creation
/// (`orc.SharesProviderCreate`).
pub static BULK_IDS: Ty = Ty::Struct(&[("responses", &Ty::Slice(&FIND_BY_STRING_ID))]);

/// `rpc.commonErrorMessage` (rpc/client.go): how the core reads a provider's
/// refusal.
pub static ERROR_MESSAGE: Ty = Ty::Struct(&[
    ("statusCode", &Ty::Opt(&Ty::Int)),
    ("why", &Ty::Opt(&Ty::Str)),
    ("errorCode", &Ty::Str),
]);

/// The resource flags (`orc.ResourceFlags`, resource.go) as a query carries them.
macro_rules! resource_flags {
    () => {
        [
            ("includeOthers", &crate::gojson::Ty::Bool),
            ("includeUpdates", &crate::gojson::Ty::Bool),
            ("includeSupport", &crate::gojson::Ty::Bool),
            ("includeProduct", &crate::gojson::Ty::Bool),
            (
                "filterLabels",
                &crate::gojson::Ty::Map(&crate::gojson::Ty::Str),
            ),
            (
                "filterCreatedBy",
                &crate::gojson::Ty::Opt(&crate::gojson::Ty::Str),
            ),
            (
                "filterCreatedAfter",
                &crate::gojson::Ty::Opt(&crate::gojson::Ty::Uint),
            ),
            (
                "filterCreatedBefore",
                &crate::gojson::Ty::Opt(&crate::gojson::Ty::Uint),
            ),
            (
                "filterProvider",
                &crate::gojson::Ty::Opt(&crate::gojson::Ty::Str),
            ),
            (
                "filterProductId",
                &crate::gojson::Ty::Opt(&crate::gojson::Ty::Str),
            ),
            (
                "filterProductCategory",
                &crate::gojson::Ty::Opt(&crate::gojson::Ty::Str),
            ),
            (
                "hideProductId",
                &crate::gojson::Ty::Opt(&crate::gojson::Ty::Str),
            ),
            (
                "hideProductCategory",
                &crate::gojson::Ty::Opt(&crate::gojson::Ty::Str),
            ),
            (
                "hideProvider",
                &crate::gojson::Ty::Opt(&crate::gojson::Ty::Str),
            ),
            (
                "filterProviderIds",
                &crate::gojson::Ty::Opt(&crate::gojson::Ty::Str),
            ),
            (
                "filterIds",
                &crate::gojson::Ty::Opt(&crate::gojson::Ty::Str),
            ),
            ("sortBy", &crate::gojson::Ty::Opt(&crate::gojson::Ty::Str)),
            (
                "sortDirection",
                &crate::gojson::Ty::Opt(&crate::gojson::Ty::Str),
            ),
        ]
    };
}

pub(crate) const RESOURCE_FLAGS: [(&str, &crate::gojson::Ty); 18] = resource_flags!();

/// `ResourceParseId`: Go's `strconv.ParseInt(id, 10, 64)`, 0 when it fails; the
/// core never hands out 0, so only a positive result can name a resource.
pub fn resource_id(id: &str) -> Option<String> {
    crate::query::parse_int(id)
        .filter(|n| *n > 0)
        .map(|n| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gojson::decode;
    use serde_json::json;

    #[test]
    fn registration_reads_spec_not_specification() {
        let v = decode(
            br#"{"items":[{"specification":{"title":"Home"},"spec":{"title":"Work","product":{"id":"p","category":"c","provider":"hpc"}},"providerGeneratedId":"h"}]}"#,
            &DRIVES_REGISTER,
        )
        .unwrap();
        let item = &v["items"][0];
        assert_eq!(item["spec"]["title"], "Work");
        assert_eq!(item["spec"]["product"]["provider"], "hpc");
        assert_eq!(item["createdBy"], json!(null));
        assert_eq!(item["projectAllRead"], false);
    }

    #[test]
    fn a_report_with_a_fractional_usage_fails() {
        let body = br#"{"items":[{"owner":{"type":"user","username":"u"},"categoryIdV2":{"name":"c","provider":"hpc"},"usage":1.5}]}"#;
        assert!(decode(body, &REPORT_USAGE).is_err());
        let body = br#"{"items":[{"usage":2,"description":{"scope":null}}]}"#;
        let v = decode(body, &REPORT_USAGE).unwrap();
        assert_eq!(v["items"][0]["description"]["scope"], json!(null));
        assert_eq!(v["items"][0]["isDeltaCharge"], false);
    }

    #[test]
    fn a_job_update_needs_an_integer_timestamp() {
        let ok =
            br#"{"items":[{"id":"5","update":{"state":"RUNNING","timestamp":1700000000000}}]}"#;
        assert!(decode(ok, &JOBS_UPDATE).is_ok());
        for bad in [
            &br#"{"items":[{"id":5,"update":{}}]}"#[..],
            br#"{"items":[{"id":"5","update":{"timestamp":"1"}}]}"#,
            br#"{"items":[{"id":"5","update":{"timestamp":null}}]}"#,
            br#"{"items":[{"id":"5","update":{"status":7}}]}"#,
            br#"{"items":{"id":"5"}}"#,
        ] {
            assert!(decode(bad, &JOBS_UPDATE).is_err());
        }
    }
}
