//! The address pool (paper §3.2) on both backends: concurrent creates get
//! distinct addresses, an exhausted pool refuses with a clear message,
//! destroy gives addresses back, and orphans of a crash are released.

mod common;

use common::*;
use vws_model::Form;
use vws_store::Backend;

const NETWORKS: &str = "[[network]]\nname = \"big\"\ncidr = \"10.90.0.0/24\"\ngateway = \"10.90.0.1\"\n\n[[network]]\nname = \"tiny\"\ncidr = \"10.91.0.0/29\"\ngateway = \"10.91.0.1\"\nexclude = [\"10.91.0.2-10.91.0.4\"]\nmac_prefix = \"52:54:91\"\n";

fn desc(network: &str) -> vws_model::Description {
    let text = format!(
        "category = \"vm\"\nlifeCycle = 600\n[hardware]\nram = \"64MiB\"\n[[network.nics]]\nname = \"eth0\"\nmethod = \"pool\"\nnetwork = \"{network}\"\n[software]\nimage = \"minimal:1\"\n"
    );
    vws_model::parse(&text, Form::Toml).unwrap()
}

async fn pool_on(backend: Backend) {
    let h = harness_networks(backend, NETWORKS).await;
    h.kernel_image("minimal", "1").await;
    let svc = h.service.clone();

    // 100 concurrent creates on a /24: 100 distinct addresses.
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                svc.create(&admin(), desc("big"), Form::Toml, None)
                    .await
                    .map(|w| w.record.id)
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().unwrap());
    }
    let used = svc.store().addresses(Some("big")).await.unwrap();
    let distinct: std::collections::HashSet<_> = used.iter().map(|a| a.address.clone()).collect();
    assert_eq!((used.len(), distinct.len()), (100, 100));
    assert!(
        !distinct.contains("10.90.0.1"),
        "the gateway is never handed out"
    );

    // A /29 without the gateway and three excluded addresses holds two.
    let a = svc
        .create(&alice(), desc("tiny"), Form::Toml, None)
        .await
        .unwrap();
    let b = svc
        .create(&bob(), desc("tiny"), Form::Toml, None)
        .await
        .unwrap();
    let got: Vec<String> = svc
        .store()
        .addresses(Some("tiny"))
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.address)
        .collect();
    assert_eq!(got, ["10.91.0.5", "10.91.0.6"]);
    let mac = &svc.store().addresses_of(&a.record.id).await.unwrap()[0].mac;
    assert!(mac.starts_with("52:54:91:"), "{mac}");
    let before = svc.store().addresses(None).await.unwrap().len();
    let e = svc
        .create(&alice(), desc("tiny"), Form::Toml, None)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("network tiny has no free address"),
        "{e}"
    );
    assert_eq!(
        svc.store().addresses(None).await.unwrap().len(),
        before,
        "nothing held by a refused create"
    );
    // Unknown networks name the element.
    let e = svc
        .create(&alice(), desc("nowhere"), Form::Toml, None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("network.nics[0].network"), "{e}");

    // Destroy gives the address back; the next create gets it.
    svc.destroy(&alice(), &a.record.id).await.unwrap();
    let c = svc
        .create(&alice(), desc("tiny"), Form::Toml, None)
        .await
        .unwrap();
    assert_eq!(
        svc.store().addresses_of(&c.record.id).await.unwrap()[0].address,
        "10.91.0.5"
    );
    let _ = b;

    // An allocation without a record (a crash in between) is released at the
    // next start.
    svc.store()
        .allocate_address(
            "tiny",
            &["10.91.0.6".into(), "10.91.0.7".into()],
            "ws-ghost",
            "eth0",
            "52:54:91:00:00:01",
            time::OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
    assert_eq!(svc.store().release_orphan_addresses().await.unwrap(), 1);
    for id in ids {
        svc.destroy(&admin(), &id).await.unwrap();
    }
    assert!(svc.store().addresses(Some("big")).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn address_pool_on_sqlite() {
    pool_on(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn address_pool_on_postgres() {
    pool_on(Backend::Postgres).await;
}
