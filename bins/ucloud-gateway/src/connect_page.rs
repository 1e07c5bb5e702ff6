//! The connect page: where UCloud sends a person's browser after
//! integration/connect (`GET /ucloud/{P}/connect?ticket=...&user=...`). No bearer
//! token (a browser has none) and no dispatcher: the page only names the UCloud user
//! and shows the ticket to paste into `ucloud-connect` on the login node. The ticket
//! proves nothing here; ucloud-registry checks it when `ucloud-connect` redeems it,
//! as the account the kernel says runs it. The name comes from the link, so a forged
//! link can show any name: the page says so, and the name that counts is the one
//! ucloud-connect shows (from the registry) before it asks for confirmation.

use std::io::Write;
use ucloud_http::server::{write_response, Request};
use ucloud_wire::names::UcloudName;

/// A ticket is base64url text (ucloud-registry makes 43 characters); anything longer
/// or with other characters is a damaged link.
const MAX_TICKET: usize = 128;

/// Answers the page (200) or a page that says the link is damaged (400).
pub fn serve(req: &Request, out: &mut impl Write, keep_alive: bool) -> u16 {
    let ticket = req.query_param("ticket").unwrap_or_default();
    let user = req
        .query_param("user")
        .and_then(|u| UcloudName::new(&u).ok());
    let (status, body) = match user {
        Some(user) if is_ticket_text(&ticket) => (200, page(&ticket, &user)),
        _ => (400, damaged()),
    };
    let mut headers = vec![
        ("Content-Type", "text/html; charset=utf-8"),
        // The ticket is in the URL: keep it out of caches and other sites' logs.
        ("Cache-Control", "no-store"),
        ("Referrer-Policy", "no-referrer"),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        (
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    ];
    if !keep_alive {
        headers.push(("Connection", "close"));
    }
    // A failed write shows up as a closed connection on the next read.
    let _ = write_response(out, status, &headers, body.as_bytes());
    status
}

fn is_ticket_text(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_TICKET
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;max-width:44em;margin:3em auto;padding:0 1em;line-height:1.5}\
pre{background:#f3f3f3;padding:1em;font-size:1.1em;white-space:pre-wrap;word-break:break-all;user-select:all}";

fn page(ticket: &str, user: &UcloudName) -> String {
    let (ticket, user) = (escape(ticket), escape(user.as_str()));
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>Connect your UCloud account</title><style>{STYLE}</style></head><body>\n\
<h1>Connect your UCloud account</h1>\n\
<p>This link connects the UCloud user <strong id=\"user\">{user}</strong> to your \
account on this site. If that is not you, stop here: whoever sent you the link would \
get the use of your account.</p>\n\
<p>Log in to this site's login node with your own account and run</p>\n\
<pre id=\"command\">ucloud-connect</pre>\n\
<p>Paste this ticket when it asks for it:</p>\n\
<pre id=\"ticket\">{ticket}</pre>\n\
<p>ucloud-connect then shows the UCloud user the ticket is for and your account, and \
asks you to confirm: check that the UCloud user is yours. The account that runs it is \
the account UCloud will use. The ticket works once, within 10 minutes. Do not share \
it, and do not put it on a command line, where other users can see it.</p>\n\
<p>In a script, with no terminal to ask on: <code>ucloud-connect --yes &lt; FILE</code>, \
where FILE holds the ticket and only you can read it.</p>\n\
<p>When it says <em>connected</em>, go back to UCloud and reload the page.</p>\n\
</body></html>\n"
    )
}

fn damaged() -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>Damaged link</title><style>{STYLE}</style></head><body>\n\
<h1>This connect link is damaged</h1>\n\
<p>It carries no valid ticket. Go back to UCloud and press Connect again.</p>\n\
</body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(target: &str) -> (u16, String) {
        let req = Request::new("GET", target, &[]);
        let mut out = Vec::new();
        let status = serve(&req, &mut out, true);
        (status, String::from_utf8(out).unwrap())
    }

    #[test]
    fn the_page_names_the_user_and_keeps_the_ticket_off_the_command_line() {
        let (status, text) =
            get("/ucloud/hpc/connect?ticket=Ab-_09xyz&user=Donna%20J%3Cb%3E%234512");
        assert_eq!(status, 200);
        assert!(
            text.contains("<pre id=\"command\">ucloud-connect</pre>"),
            "{text}"
        );
        assert!(
            text.contains("<pre id=\"ticket\">Ab-_09xyz</pre>"),
            "{text}"
        );
        assert!(
            text.contains("<strong id=\"user\">Donna J&lt;b&gt;#4512</strong>"),
            "{text}"
        );
        assert!(!text.contains("ucloud-connect Ab-_09xyz"), "{text}");
        assert!(text.contains("Cache-Control: no-store"), "{text}");
        assert!(text.contains("Referrer-Policy: no-referrer"), "{text}");
    }

    #[test]
    fn hostile_tickets_get_a_damaged_page_without_their_text() {
        for bad in [
            "%3Cscript%3Ealert(1)%3C%2Fscript%3E",
            "a%22b",
            "",
            "a%20b",
            &"x".repeat(MAX_TICKET + 1),
        ] {
            let (status, text) = get(&format!("/ucloud/hpc/connect?ticket={bad}&user=D%234"));
            assert_eq!(status, 400, "{bad}");
            assert!(
                !text.contains("<script") && !text.contains("ucloud-connect"),
                "{text}"
            );
        }
        // The name: missing, empty, control characters, too long, not UTF-8.
        let long = "x".repeat(ucloud_wire::names::UCLOUD_NAME_MAX + 1);
        for bad in ["", "&user=", "&user=a%0Ab", "&user=%E2%80%AE", "&user=%FF"] {
            let (status, text) = get(&format!("/ucloud/hpc/connect?ticket=Ab{bad}"));
            assert_eq!(status, 400, "{bad}: {text}");
        }
        assert_eq!(
            get(&format!("/ucloud/hpc/connect?ticket=Ab&user={long}")).0,
            400
        );
        assert_eq!(get("/ucloud/hpc/connect").0, 400);
    }

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
