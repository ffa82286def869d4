//! The client's failover and retries against the real API: a first URL
//! where nothing listens is skipped for the next; a request whose
//! connection is cut after the service acted (its replica died before
//! answering) is sent again with the same Idempotency-Key and answered
//! from the first try, so nothing is done twice.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vws_store::Backend;

const TOML_DESC: &str = "category = \"vm\"\nlifeCycle = 600\n[software]\nimage = \"minimal:1\"\n";

/// A port where nothing listens.
async fn dead_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

/// A proxy to `upstream` whose first connection carries the request
/// there, waits for the answer to begin, and closes without passing it on;
/// later connections pass through. Returns its URL and how many
/// connections it took.
async fn cutting_proxy(upstream: &str) -> (String, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let to = upstream.trim_start_matches("http://").to_string();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut client, _) = l.accept().await.unwrap();
            let mut server = tokio::net::TcpStream::connect(&to).await.unwrap();
            let n = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if n > 0 {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    return;
                }
                let mut buf = vec![0u8; 64 << 10];
                let got = client.read(&mut buf).await.unwrap();
                server.write_all(&buf[..got]).await.unwrap();
                // The service has the whole request once its answer starts.
                let _ = server.read(&mut buf).await;
                drop(client);
            });
        }
    });
    (url, seen)
}

async fn fails_over_and_retries(backend: Backend) {
    let h = harness(backend, "").await;
    h.kernel_image("minimal", "1").await;
    let base = serve_api(&h, alice()).await;

    // Nothing at the first URL: the request goes to the next.
    let client = vws_client::Client::new(&format!("{},{base}", dead_url().await));
    let first = client
        .create(TOML_DESC.into(), vws_model::Form::Toml, None)
        .await
        .unwrap();
    assert_eq!(client.base(), base, "it stays with the one that answered");

    // Cut off after the service acted: the retry gets the first answer.
    let (proxy, connections) = cutting_proxy(&base).await;
    let client = vws_client::Client::new(&proxy);
    let second = client
        .create(TOML_DESC.into(), vws_model::Form::Toml, None)
        .await
        .unwrap();
    assert_eq!(connections.load(Ordering::SeqCst), 2, "one cut, one retry");
    let mine = h.service.store().owner_usage(&alice().dn).await.unwrap().0;
    assert_eq!(mine, 2, "the cut request was done once");
    assert_ne!(first.record.id, second.record.id);
    let kept = h
        .service
        .store()
        .workspace(&second.record.id)
        .await
        .unwrap();
    assert!(
        kept.is_some(),
        "the retry's answer names the workspace made"
    );

    // With one URL and nothing listening, the error comes at once.
    let t = std::time::Instant::now();
    let err = vws_client::Client::new(&dead_url().await)
        .list(&Default::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot reach"), "{err}");
    assert!(t.elapsed() < std::time::Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_client_fails_over_and_retries() {
    fails_over_and_retries(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_client_fails_over_and_retries() {
    fails_over_and_retries(Backend::Postgres).await;
}
