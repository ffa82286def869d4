//! Singleton loops: on PostgreSQL one store (one replica) at a time leads
//! a loop, the lock goes when the leader's session ends and the next to
//! try takes over; another loop's name is another lock. SQLite, which one
//! process serves, always leads.

use vws_store::testing::fresh;
use vws_store::Backend;

#[tokio::test]
async fn one_replica_leads_and_another_takes_over() {
    let db = fresh(Backend::Postgres).await;
    let (a, b) = (db.store().await, db.store().await);
    let mut first = a
        .try_lead("reaper")
        .await
        .unwrap()
        .expect("the first leads");
    assert!(first.still_held().await);
    assert!(b.try_lead("reaper").await.unwrap().is_none(), "two leaders");
    assert!(b.try_lead("other-loop").await.unwrap().is_some());
    drop(first);
    // The session closes in the background; the lock is free soon after.
    let mut taken = None;
    for _ in 0..50 {
        if let Some(l) = b.try_lead("reaper").await.unwrap() {
            taken = Some(l);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(taken.is_some(), "nobody took over");
    assert!(a.try_lead("reaper").await.unwrap().is_none());
}

#[tokio::test]
async fn sqlite_always_leads() {
    let db = fresh(Backend::Sqlite).await;
    let s = db.store().await;
    assert!(s.try_lead("reaper").await.unwrap().is_some());
    assert!(s.try_lead("reaper").await.unwrap().is_some());
}
