//! `sdg serve`: the API's access control and upload safety over real HTTP, and the whole UI driven in
//! headless Chromium by Playwright (`tests/browser/ui.mjs`): form, live run, cancel, resume, data table.

mod common;

use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{TestServer, write};

/// A running `sdg serve`, killed on drop.
struct Serve {
    child: Child,
    /// `127.0.0.1:PORT`, whatever address it was bound to.
    address: String,
    token: Option<String>,
}

impl Serve {
    fn start(runs: &Path, host: &str, extra: &[&str]) -> Serve {
        let mut child = common::sdg()
            .args(["serve", "--port", "0", "--host", host, "--runs"])
            .arg(runs)
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("sdg serve starts");
        let mut first = String::new();
        let mut reader = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        reader.read_line(&mut first).expect("first line");
        // `sdg serve: http://HOST:PORT/` or `.../?token=T`
        let url = first.trim().strip_prefix("sdg serve: http://").expect("address line").to_string();
        let (host_port, rest) = url.split_once('/').expect("path");
        let port = host_port.rsplit_once(':').expect("port").1;
        let token = rest.strip_prefix("?token=").map(str::to_string);
        // Keep reading stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in reader.lines() {});
        Serve { child, address: format!("127.0.0.1:{port}"), token }
    }

    /// One HTTP/1.1 request; the status and the body.
    fn request(&self, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, String) {
        let mut stream = std::net::TcpStream::connect(&self.address).expect("connect");
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.address,
            body.len()
        )
        .unwrap();
        stream.write_all(body).unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let response = String::from_utf8_lossy(&response).into_owned();
        let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bound off loopback, every route but the two static assets answers 401 without the token (or with a
/// wrong one), and works with it; upload names that could leave the run's inputs folder are refused.
#[test]
fn off_loopback_every_endpoint_needs_the_token_and_uploads_stay_inside_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let serve = Serve::start(&runs, "0.0.0.0", &[]);
    let token = serve.token.clone().expect("a token is printed when bound off loopback");
    assert_eq!(token.len(), 32);

    let (status, body) = serve.request("POST", "/api/drafts", Some(&token), b"");
    assert_eq!(status, 201, "{body}");
    let draft: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = draft["id"].as_str().unwrap().to_string();

    let endpoints: Vec<(&str, String)> = vec![
        ("GET", "/".into()),
        ("GET", "/api/defaults".into()),
        ("GET", "/api/formats".into()),
        ("POST", "/api/validate".into()),
        ("POST", "/api/estimate".into()),
        ("POST", "/api/config/parse".into()),
        ("POST", "/api/config/render".into()),
        ("POST", "/api/drafts".into()),
        ("GET", format!("/api/drafts/{id}/files")),
        ("PUT", format!("/api/drafts/{id}/files/a.txt")),
        ("GET", "/api/runs".into()),
        ("POST", "/api/runs".into()),
        ("GET", format!("/api/runs/{id}")),
        ("GET", format!("/api/runs/{id}/events")),
        ("POST", format!("/api/runs/{id}/cancel")),
        ("POST", format!("/api/runs/{id}/resume")),
        ("GET", format!("/api/runs/{id}/data")),
        ("GET", format!("/api/runs/{id}/records/x")),
        ("GET", format!("/api/runs/{id}/rejects")),
        ("GET", format!("/api/runs/{id}/export/jsonl")),
        ("GET", "/api/no-such-route".into()),
    ];
    for (method, path) in &endpoints {
        for given in [None, Some("wrong-token"), Some(&token[..31])] {
            let (status, body) = serve.request(method, path, given, b"{}");
            assert_eq!(status, 401, "{method} {path} with {given:?}: {body}");
            assert!(!body.contains(&token), "the token is never echoed");
        }
        let query = if path.contains('?') { "&" } else { "?" };
        let (status, _) = serve.request(method, &format!("{path}{query}token=nope"), None, b"{}");
        assert_eq!(status, 401, "{method} {path}?token=nope");
    }
    // With the token (header or query) the routes answer; nothing was uploaded by the refused PUTs.
    let (status, body) = serve.request("GET", "/api/runs", Some(&token), b"");
    assert_eq!(status, 200, "{body}");
    let (status, _) = serve.request("GET", &format!("/api/runs?token={token}"), None, b"");
    assert_eq!(status, 200);
    let (status, page) = serve.request("GET", &format!("/?token={token}"), None, b"");
    assert_eq!(status, 200);
    assert!(page.contains("<script"), "{page}");
    // The assets carry no data and are needed before the page can send the token.
    assert_eq!(serve.request("GET", "/app.js", None, b"").0, 200);
    assert_eq!(serve.request("GET", "/app.css", None, b"").0, 200);
    let inputs = runs.join(&id).join("inputs");
    assert_eq!(std::fs::read_dir(&inputs).unwrap().count(), 0);

    // Upload names: percent-encoded separators and dots are decoded, then refused.
    for name in ["..%2F..%2Fescaped.txt", "..", "%2E%2E", ".hidden", "a%5Cb.txt", "%2Fetc%2Fpasswd", "x%00y"] {
        let (status, body) = serve.request("PUT", &format!("/api/drafts/{id}/files/{name}"), Some(&token), b"data");
        assert!(status == 400 || status == 404, "{name}: {status} {body}");
    }
    // A raw `../` in the path never reaches a handler as a file name either.
    let (status, _) = serve.request("PUT", &format!("/api/drafts/{id}/files/../../escaped.txt"), Some(&token), b"data");
    assert!(status == 400 || status == 404, "{status}");
    // Run ids are checked too.
    for bad in ["..", "%2E%2E", "..%2F..", "UPPER"] {
        let (status, _) = serve.request("PUT", &format!("/api/drafts/{bad}/files/a.txt"), Some(&token), b"data");
        assert!(status == 400 || status == 404, "{bad}: {status}");
    }
    let escaped: Vec<_> =
        walk(dir.path()).into_iter().filter(|p| p.ends_with("escaped.txt") || p.ends_with("a.txt")).collect();
    assert!(escaped.is_empty(), "{escaped:?}");

    // A good upload lands in the run's inputs; the same name again is refused, not overwritten.
    let (status, body) = serve.request("PUT", &format!("/api/drafts/{id}/files/notes%20one.md"), Some(&token), b"# hi");
    assert_eq!(status, 201, "{body}");
    assert!(body.contains("\"path\":\"inputs/notes one.md\""), "{body}");
    let (status, _) = serve.request("PUT", &format!("/api/drafts/{id}/files/notes%20one.md"), Some(&token), b"other");
    assert_eq!(status, 409);
    assert_eq!(std::fs::read(inputs.join("notes one.md")).unwrap(), b"# hi");
    // Another run's uploads are its own.
    let (_, other) = serve.request("POST", "/api/drafts", Some(&token), b"");
    let other: serde_json::Value = serde_json::from_str(&other).unwrap();
    let (status, _) = serve.request(
        "PUT",
        &format!("/api/drafts/{}/files/notes%20one.md", other["id"].as_str().unwrap()),
        Some(&token),
        b"mine",
    );
    assert_eq!(status, 201);
    assert_eq!(std::fs::read(inputs.join("notes one.md")).unwrap(), b"# hi");
}

/// On loopback no token is needed, and validation answers with the words of `sdg validate`.
#[test]
fn on_loopback_the_api_validates_like_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(&dir.path().join("runs"), "127.0.0.1", &[]);
    assert!(serve.token.is_none());
    let bad = "task:\n  name: x\n  instrution: y\n  num_samples: 3\n  source: local\n";
    let body = serde_json::json!({"yaml": bad}).to_string();
    let (status, answer) = serve.request("POST", "/api/validate", None, body.as_bytes());
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["ok"], false);
    write(dir.path(), "config.yaml", bad);
    let cli = common::run_in(dir.path(), &["validate", "config.yaml"]);
    let cli_errors = common::stderr(&cli);
    for error in answer["errors"].as_array().unwrap() {
        let text = error["text"].as_str().unwrap();
        assert!(cli_errors.contains(text), "{text:?} is not in the CLI's report:\n{cli_errors}");
    }
    let (status, rendered) = serve.request(
        "POST",
        "/api/config/render",
        None,
        serde_json::json!({"value": {"task": {"name": "x", "num_samples": 3}}}).to_string().as_bytes(),
    );
    assert_eq!(status, 200);
    let yaml: serde_json::Value = serde_json::from_str(&rendered).unwrap();
    let (status, parsed) = serve.request(
        "POST",
        "/api/config/parse",
        None,
        serde_json::json!({"yaml": yaml["yaml"]}).to_string().as_bytes(),
    );
    assert_eq!(status, 200);
    let parsed: serde_json::Value = serde_json::from_str(&parsed).unwrap();
    assert_eq!(parsed["value"], serde_json::json!({"task": {"name": "x", "num_samples": 3}}), "YAML round trip");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// Node, Playwright and Chromium are there (`.ci/run` installs them); else the browser test says why it
/// cannot run, and fails when `SDG_REQUIRE_BROWSER=1` (as in CI).
fn browser_tools(browser_dir: &Path) -> Result<String, String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_string());
    if !Path::new(&chromium).exists() {
        return Err(format!("no Chromium at {chromium} (apt-get install chromium)"));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Err("no node".into());
    }
    if !browser_dir.join("node_modules/playwright-core").is_dir() {
        return Err(format!("no playwright-core (cd {} && npm ci)", browser_dir.display()));
    }
    Ok(chromium)
}

/// The UI end to end in headless Chromium: a local recipe filled in the form against the test model
/// server, started, counters seen rising, cancelled, resumed to completion, the data table filtered, a
/// record opened, the runs page. Screenshots go to `target/ui-shots/`.
#[test]
fn the_ui_runs_a_recipe_from_form_to_data_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let browser_dir = root.join("tests/browser");
    let chromium = match browser_tools(&browser_dir) {
        Ok(chromium) => chromium,
        Err(why) if std::env::var("SDG_REQUIRE_BROWSER").as_deref() != Ok("1") => {
            eprintln!("skipped: {why}");
            return;
        }
        Err(why) => panic!("the browser test cannot run: {why}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    for i in 0..150 {
        write(
            &corpus,
            &format!("doc{i:03}.txt"),
            &format!(
                "Survey note {i}. The river at station {i} flows {} kilometres through the valley before it reaches \
                 the sea; engineers measured its flow each spring and recorded {} cubic metres a second.",
                100 + i,
                7 * i + 3
            ),
        );
    }
    // Slow enough answers that the run is still going when the test cancels it.
    let model = TestServer::start(&["--latency-ms", "1200", "--skill", "test-model=1.0"]);
    let serve = Serve::start(
        &dir.path().join("runs"),
        "127.0.0.1",
        &["--cache-dir", dir.path().join("cache").to_str().unwrap()],
    );
    let shots = root.join("target/ui-shots");
    std::fs::create_dir_all(&shots).unwrap();
    let started = std::time::Instant::now();
    let output = Command::new("node")
        .arg("ui.mjs")
        .current_dir(&browser_dir)
        .env("SDG_URL", format!("http://{}", serve.address))
        .env("MODEL_URL", &model.url)
        .env("CORPUS", &corpus)
        .env("SHOTS", &shots)
        .env("CHROMIUM", chromium)
        .env("NUM_SAMPLES", "100")
        .env("RUN_TIMEOUT_S", "240")
        .output()
        .expect("node runs");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("{report}browser test: {:.1} s", started.elapsed().as_secs_f64());
    assert!(output.status.success(), "the browser test failed:\n{report}");
    for shot in ["new-run.png", "run.png", "run-done.png", "data.png", "runs.png"] {
        assert!(shots.join(shot).metadata().is_ok_and(|m| m.len() > 10_000), "{shot} missing or empty");
    }
}

/// Two runs at once, each in its own folder; a restarted server lists them again with their results.
#[test]
fn runs_live_in_their_folders_so_a_restarted_server_shows_them_again() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let model = TestServer::start(&["--latency-ms", "200", "--skill", "test-model=1.0"]);
    let cache = dir.path().join("cache");
    let serve = Serve::start(&runs, "127.0.0.1", &["--cache-dir", cache.to_str().unwrap()]);
    let mut ids = Vec::new();
    for topic in ["rivers", "mountains"] {
        let (_, draft) = serve.request("POST", "/api/drafts", None, b"");
        let id = serde_json::from_str::<serde_json::Value>(&draft).unwrap()["id"].as_str().unwrap().to_string();
        for i in 0..6 {
            let text =
                format!("Note {i} about {topic}: station {i} recorded {} units of flow in the spring survey.", i * 11);
            let (status, _) =
                serve.request("PUT", &format!("/api/drafts/{id}/files/{topic}-{i}.txt"), None, text.as_bytes());
            assert_eq!(status, 201);
        }
        let yaml = format!(
            "run: {{seed: 1, batch_rows: 2}}\ntask:\n  name: {topic}\n  instruction: Questions.\n  num_samples: 4\n  \
             source: local\n  local: {{paths: [inputs], min_chars: 20}}\nmodels:\n  teacher: {{base_url: \"{}\", model: test-model}}\n",
            model.url
        );
        let body = serde_json::json!({"id": id, "yaml": yaml}).to_string();
        let (status, answer) = serve.request("POST", "/api/runs", None, body.as_bytes());
        assert_eq!(status, 201, "{answer}");
        ids.push(id);
    }
    let summaries = |serve: &Serve| -> Vec<serde_json::Value> {
        let (_, list) = serve.request("GET", "/api/runs", None, b"");
        serde_json::from_str::<serde_json::Value>(&list).unwrap()["runs"].as_array().unwrap().clone()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let runs = summaries(&serve);
        if runs.iter().all(|r| r["status"] == "completed") {
            break;
        }
        if std::time::Instant::now() > deadline {
            let logs: Vec<String> = ids
                .iter()
                .map(|id| std::fs::read_to_string(dir.path().join("runs").join(id).join("run.log")).unwrap_or_default())
                .collect();
            panic!("runs did not complete: {runs:#?}\nlogs: {logs:#?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let before = summaries(&serve);
    drop(serve);
    let again = Serve::start(&runs, "127.0.0.1", &[]);
    let after = summaries(&again);
    assert_eq!(after.len(), 2);
    for (old, new) in before.iter().zip(&after) {
        assert_eq!((&old["id"], &old["status"], &old["rows"]), (&new["id"], &new["status"], &new["rows"]));
        assert!(new["rows"].as_u64().unwrap() >= 4, "{new}");
        assert_eq!(new["active"], false);
    }
    let names: Vec<&str> = after.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"rivers") && names.contains(&"mountains"), "{names:?}");
    // Each run's data is its own.
    for id in &ids {
        let (status, page) = again.request("GET", &format!("/api/runs/{id}/data?limit=100"), None, b"");
        assert_eq!(status, 200);
        let page: serde_json::Value = serde_json::from_str(&page).unwrap();
        let paths: Vec<&str> =
            page["rows"].as_array().unwrap().iter().map(|r| r["source_path"].as_str().unwrap()).collect();
        let topic = if paths[0].contains("rivers") { "rivers" } else { "mountains" };
        assert!(paths.iter().all(|p| p.contains(topic)), "{paths:?}");
        let (status, file) = again.request("GET", &format!("/api/runs/{id}/export/jsonl"), None, b"");
        assert_eq!(status, 200);
        assert_eq!(file.lines().count() as u64, page["total"].as_u64().unwrap(), "the download holds every row");
    }
}
