//! The live page served at `/` on the web listener, and its Content-Security-Policy. The
//! loop only routes to it; what the page is and what it may load live here.

/// The page: lines shown as text (never markup), a box to send, a WebSocket back to `/ws`.
const PAGE: &str = include_str!("page.html");

/// The page as served: it shows its own lines itself unless the server echoes them back
/// (`--echo`), so it is told which; and whether rooms are on (`--rooms`: it then joins
/// the room its `?room=NAME` names, `main` by default, and shows the name).
pub fn page(echo: bool, rooms: bool) -> String {
    let mut page = PAGE.to_string();
    if echo {
        page = page.replacen("data-echo=\"off\"", "data-echo=\"on\"", 1);
    }
    if rooms {
        page = page.replacen("data-rooms=\"off\"", "data-rooms=\"on\"", 1);
    }
    page
}

/// The page's Content-Security-Policy: its own script (by its SHA-256, so no other script,
/// inline handler or injected markup could run even if a line ever became markup: the page
/// shows lines only as text, and this is the second fence), its own style, and a WebSocket
/// back to where it came from; nothing else.
pub fn content_security_policy() -> String {
    policy_for(PAGE)
}

fn policy_for(page: &str) -> String {
    use base64::Engine as _;
    let script = page
        .split_once("<script>")
        .and_then(|(_, rest)| rest.split_once("</script>"))
        .map_or("", |(script, _)| script);
    let hash = ring::digest::digest(&ring::digest::SHA256, script.as_bytes());
    let hash = base64::engine::general_purpose::STANDARD.encode(hash.as_ref());
    format!(
        "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
         connect-src 'self'; img-src data:"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_admits_exactly_the_pages_own_script() {
        let policy = policy_for("<p>x</p><script>let a = 1;</script>");
        let other = policy_for("<p>x</p><script>let a = 2;</script>");
        assert_ne!(policy, other, "another script, another hash");
        assert!(policy.starts_with("default-src 'none'; script-src 'sha256-"));
        assert!(content_security_policy().contains("connect-src 'self'"));
    }

    #[test]
    fn the_page_is_told_whether_the_server_echoes() {
        assert!(page(true, false).contains("data-echo=\"on\""));
        assert!(page(false, false).contains("data-echo=\"off\""));
        assert!(page(false, true).contains("data-rooms=\"on\""));
        assert!(page(false, false).contains("data-rooms=\"off\""));
    }
}
