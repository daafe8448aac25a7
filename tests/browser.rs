//! The live page in a real browser: Debian's headless `chromium`, driven over the Chrome
//! DevTools Protocol (CDP). Skips with one SKIPPED line when chromium is missing.
//!
//! Set `BROADCAST_SERVER_SCREENSHOT=FILE.png` to also save a screenshot of the page (the
//! README's picture is made this way).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;

use common::{DEADLINE, Server, report_skip};

/// A headless chromium showing one page, and a CDP session on that page.
struct Browser {
    child: Child,
    profile: PathBuf,
    page: tungstenite::WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Browser {
    /// Opens `url` in a new headless chromium, or says why the test must skip.
    fn open(test: &str, url: &str) -> Option<Browser> {
        if Command::new("chromium").arg("--version").output().is_err() {
            report_skip(test, "needs chromium (apt-get install chromium)");
            return None;
        }
        let profile = std::env::temp_dir().join(format!(
            "broadcast-server-chromium-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        let mut child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox", // CI runs as root
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=900,560",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        let devtools_port = devtools_port(&mut child);
        let page_url = page_debugger_url(devtools_port, url);
        let (page, _) = tungstenite::connect(page_url).expect("connect to the page over CDP");
        if let MaybeTlsStream::Plain(stream) = page.get_ref() {
            stream.set_read_timeout(Some(DEADLINE)).unwrap();
        }
        Some(Browser {
            child,
            profile,
            page,
            next_id: 0,
        })
    }

    /// Calls a CDP method and returns its result (events on the way are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({ "id": id, "method": method, "params": params });
        self.page
            .send(tungstenite::Message::Text(request.to_string().into()))
            .expect("send a CDP call");
        loop {
            let message = self.page.read().expect("read CDP");
            let Ok(text) = message.to_text() else {
                continue;
            };
            let value: Value = serde_json::from_str(text).expect("CDP sends JSON");
            if value["id"] == id {
                assert!(value.get("error").is_none(), "{method} failed: {value}");
                return value["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression in the page; returns its value.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` until it is true, failing at the deadline.
    fn wait_until(&mut self, expression: &str) {
        let deadline = Instant::now() + DEADLINE;
        while self.eval(expression) != json!(true) {
            assert!(
                Instant::now() < deadline,
                "the page never got to: {expression}"
            );
            thread::sleep(Duration::from_millis(50)); // polling the page, with a deadline
        }
    }

    /// Presses a key with its text, as a person typing would.
    fn press(&mut self, key: &str, code: &str, key_code: u32, text: &str) {
        for kind in ["keyDown", "keyUp"] {
            let mut params = json!({
                "type": kind, "key": key, "code": code,
                "windowsVirtualKeyCode": key_code, "nativeVirtualKeyCode": key_code,
            });
            if kind == "keyDown" {
                params["text"] = json!(text);
            }
            self.call("Input.dispatchKeyEvent", params);
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Reads chromium's stderr until it says where DevTools listens; keeps draining it after.
fn devtools_port(child: &mut Child) -> u16 {
    let stderr = child.stderr.take().expect("stderr is piped");
    let (found, port) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut lines = BufReader::new(stderr).lines();
        for line in lines.by_ref().map_while(Result::ok) {
            if let Some(rest) = line.split("DevTools listening on ws://127.0.0.1:").nth(1) {
                let port: u16 = rest.split('/').next().unwrap_or("").parse().unwrap_or(0);
                let _ = found.send(port);
                break;
            }
        }
        for _ in lines {} // keep the pipe from filling
    });
    port.recv_timeout(DEADLINE)
        .expect("chromium did not say where DevTools listens")
}

/// The CDP address of the tab showing `url` (from DevTools' `/json/list`).
fn page_debugger_url(port: u16, url: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to DevTools");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream
            .write_all(
                format!("GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes(),
            )
            .unwrap();
        let targets: Value =
            serde_json::from_slice(&read_http_body(&mut stream)).unwrap_or(json!([]));
        let page =
            targets.as_array().into_iter().flatten().find(|t| {
                t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url))
            });
        if let Some(debugger) = page.and_then(|t| t["webSocketDebuggerUrl"].as_str()) {
            return debugger.to_string();
        }
        assert!(Instant::now() < deadline, "chromium never showed the page");
        thread::sleep(Duration::from_millis(50)); // polling DevTools, with a deadline
    }
}

/// Reads one HTTP response and returns its body (DevTools keeps the connection open, so
/// the body ends at its Content-Length, not at end of stream).
fn read_http_body(stream: &mut TcpStream) -> Vec<u8> {
    let mut response = Vec::new();
    let mut buf = [0; 16 * 1024];
    loop {
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
            let length: usize = head
                .split("content-length:")
                .nth(1)
                .and_then(|rest| rest.lines().next())
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
            if response.len() >= end + 4 + length {
                return response[end + 4..end + 4 + length].to_vec();
            }
        }
        let n = stream.read(&mut buf).expect("read DevTools' answer");
        assert!(n > 0, "DevTools closed mid-answer");
        response.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn the_page_shows_live_lines_as_text_and_sends_what_is_typed() {
    let server = Server::start(&["--http", "127.0.0.1:0"]);
    let url = format!("http://{}/", server.web_addr());
    let Some(mut browser) = Browser::open("the_page_shows_live_lines", &url) else {
        return;
    };
    let mut nc = server.connect();
    server.wait_for_log("websocket client");
    browser.wait_until("document.getElementById('state').dataset.state === 'open'");
    // The input has the focus from the start: typing needs no click.
    assert_eq!(browser.eval("document.activeElement.id"), json!("text"));

    nc.send(
        b"hello from nc\n<script>window.pwned = 1</script>\n<img src=x onerror=\"window.pwned = 2\">\n<b>not bold</b>\n",
    );
    let shown = "Array.from(document.querySelectorAll('#lines li'), li => li.textContent)\
                 .join('\\n')";
    browser.wait_until(&format!("{shown}.includes('<b>not bold</b>')"));
    assert_eq!(
        browser.eval(shown),
        json!(
            "hello from nc\n<script>window.pwned = 1</script>\n<img src=x onerror=\"window.pwned = 2\">\n<b>not bold</b>"
        )
    );
    assert_eq!(browser.eval("typeof window.pwned"), json!("undefined"));
    assert_eq!(
        browser.eval("document.querySelectorAll('#lines script, #lines b, #lines img').length"),
        json!(0)
    );

    browser.call("Input.insertText", json!({ "text": "typed in chromium" }));
    browser.press("Enter", "Enter", 13, "\r");
    nc.expect(b"typed in chromium\n");
    browser.wait_until("document.getElementById('text').value === ''");

    if let Some(path) = std::env::var_os("BROADCAST_SERVER_SCREENSHOT") {
        nc.send(b"lines from nc appear live; typed lines go to everyone\n");
        browser.wait_until(&format!("{shown}.includes('typed lines go to everyone')"));
        let shot = browser.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            shot["data"].as_str().expect("screenshot data"),
        )
        .expect("base64 PNG");
        std::fs::write(&path, png).expect("write the screenshot");
    }
}

#[test]
fn with_rooms_the_page_is_one_rooms_shows_its_name_and_only_its_lines() {
    let server = Server::start(&["--rooms", "--http", "127.0.0.1:0"]);
    let url = format!("http://{}/?room=ops", server.web_addr());
    let Some(mut browser) = Browser::open("with_rooms_the_page_is_one_rooms", &url) else {
        return;
    };
    let mut in_ops = server.connect();
    in_ops.send(b"/join ops\n");
    in_ops.expect(b"OK joined ops\n");
    let mut in_main = server.connect();
    server.wait_for_log("websocket client");
    browser.wait_until("document.getElementById('state').dataset.state === 'open'");
    assert_eq!(
        browser.eval("document.getElementById('room').textContent"),
        json!("#ops")
    );
    assert_eq!(
        browser.eval("document.title"),
        json!("#ops · broadcast-server")
    );

    in_main.send(b"for main only\n");
    in_ops.send(b"for ops\n");
    let shown = "Array.from(document.querySelectorAll('#lines li'), li => li.textContent)\
                 .join('\\n')";
    browser.wait_until(&format!("{shown}.includes('for ops')"));
    browser.call("Input.insertText", json!({ "text": "typed in ops" }));
    browser.press("Enter", "Enter", 13, "\r");
    in_ops.expect(b"typed in ops\n");
    in_main.send(b"main again\n");
    in_ops.send(b"ops again\n");
    browser.wait_until(&format!("{shown}.includes('ops again')"));
    assert_eq!(
        browser.eval(shown),
        json!("for ops\ntyped in ops\nops again"),
        "the room's lines only"
    );
}

/// A one-page web server of another site (another port): every request gets `html`.
/// Serves until the test ends (its thread answers at most 50 requests).
fn serve_foreign_page(html: String) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().take(50) {
            let Ok(mut stream) = stream else { continue };
            stream.set_read_timeout(Some(DEADLINE)).unwrap();
            let mut head = Vec::new();
            let mut byte = [0];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{html}",
                html.len()
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    addr
}

#[test]
fn a_page_of_another_site_cannot_join_but_the_servers_own_page_can_by_either_name() {
    let server = Server::start(&["--http", "127.0.0.1:0"]);
    let web = server.web_addr();
    let mut member = server.connect();
    // Another site's page tries to join the broadcast through the visitor's browser, and to
    // post into it through the line port (a no-cors fetch needs no permission).
    let evil = serve_foreign_page(format!(
        "<!doctype html><title>evil</title><script>\
         fetch('http://127.0.0.1:{}/', {{method: 'POST', mode: 'no-cors', body: 'INJECTED\\n'}});\
         const s = new WebSocket('ws://127.0.0.1:{}/ws');\
         s.onopen = () => document.title = 'joined';\
         s.onmessage = (m) => document.title = 'read ' + m.data;\
         s.onclose = () => {{ if (document.title === 'evil') document.title = 'refused'; }};\
         </script>",
        server.addr().port(),
        web.port()
    ));
    let Some(mut foreign) = Browser::open("a_page_of_another_site", &format!("http://{evil}/"))
    else {
        return;
    };
    foreign.wait_until("document.title === 'refused'");
    server.wait_for_log("sent an HTTP request");
    let refused = server.wait_for_log("403 Forbidden");
    assert!(
        refused.contains(&format!("Origin http://{evil}")),
        "{refused}"
    );
    // The server's own page, loaded as localhost (not 127.0.0.1), joins and shows lines.
    let own = format!("http://localhost:{}/", web.port());
    let Some(mut page) = Browser::open("a_page_of_another_site", &own) else {
        return;
    };
    page.wait_until("document.getElementById('state').dataset.state === 'open'");
    let mut nc = server.connect();
    nc.send(b"only for members\n");
    // Nothing of the page's request reached the member before this line.
    member.expect(b"only for members\n");
    page.wait_until(
        "Array.from(document.querySelectorAll('#lines li'), li => li.textContent)\
         .includes('only for members')",
    );
    assert_eq!(foreign.eval("document.title"), json!("refused"));
}

/// A TCP relay to `upstream` that can cut every connection through it at once (as a
/// dropped Wi-Fi would), while it keeps accepting new ones.
struct Relay {
    addr: std::net::SocketAddr,
    open: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(upstream: std::net::SocketAddr) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let registry = std::sync::Arc::clone(&open);
        thread::spawn(move || {
            // Bounded: a test's page, its socket, reconnections and chromium's preconnects.
            for client in listener.incoming().take(1000) {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let mut list = registry.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Relay { addr, open }
    }

    /// Cuts every connection made so far, both ways.
    fn cut_all(&self) {
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[test]
fn an_event_source_that_loses_its_connection_shows_every_line_once() {
    let server = Server::start(&["--http", "127.0.0.1:0", "--history", "100"]);
    let relay = Relay::start(server.web_addr());
    let url = format!("http://{}/", relay.addr);
    let Some(mut browser) = Browser::open("an_event_source_that_loses_its_connection", &url) else {
        return;
    };
    // The server's page, loaded (not the blank page chromium starts with: a script run
    // there would be gone with it).
    browser.wait_until(&format!(
        "location.host === '{}' && document.readyState === 'complete'",
        relay.addr
    ));
    browser.eval(
        "window.got = []; window.opens = 0; \
         window.source = new EventSource('/events'); \
         source.onopen = () => window.opens++; \
         source.onmessage = e => { window.got.push(e.data); window.lastId = e.lastEventId; }; \
         source.addEventListener('missed', e => window.got.push('missed ' + e.data)); \
         true",
    );
    browser.wait_until("window.opens === 1");
    let mut sender = server.connect();
    sender.send(b"l1\nl2\nl3\n");
    browser.wait_until("window.got.length === 3");
    relay.cut_all();
    // It knows it lost the stream and is waiting to reconnect (a few seconds in chromium).
    browser.wait_until("window.source.readyState === EventSource.CONNECTING");
    sender.send(b"l4\nl5\n");
    browser.wait_until("window.opens === 2 && window.got.length >= 5");
    sender.send(b"l6\n");
    browser.wait_until("window.got.length >= 6");
    assert_eq!(
        browser.eval("window.got.join(',')"),
        json!("l1,l2,l3,l4,l5,l6"),
        "every line once, in order, none missed"
    );
    assert_eq!(browser.eval("window.lastId.split('-')[1]"), json!("6"));
}
