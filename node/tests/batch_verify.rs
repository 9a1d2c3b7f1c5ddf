//! The burst path into the store: chunks that arrive together are verified
//! as one batch, and a forged chunk in the batch is still named and costs
//! only its own sender reputation.

mod support;

use bytes::Bytes;
use dcdn_node::chunk::{ChunkId, PeerId, StreamId};
use dcdn_node::crypto::Signer;
use dcdn_node::roles::node::{Accepted, Path};
use dcdn_node::up::plan::Counts;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use support::cluster::TestCluster;

#[tokio::test]
async fn a_forged_chunk_in_a_batch_is_refused_by_name_and_only_its_sender_struck() {
    let c = TestCluster::start(
        "batch-verify",
        Counts {
            relays: 0,
            edges: 0,
        },
        |_| {},
        |_| {},
    )
    .await;
    let shared = c.origin().running().shared.clone();
    let signer = Signer::load(&c.plan.dir.join("signing.key")).unwrap();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let stream = StreamId::from_name("batch");
    let chunk = |seq: u64| {
        signer.sign_chunk(
            ChunkId::new(stream, seq),
            Bytes::from(vec![seq as u8; 4096]),
            now_ms,
        )
    };
    let (honest, forger) = (PeerId(11), PeerId(22));
    let mut forged = chunk(3);
    forged.signature[40] ^= 1;
    let batch = vec![
        (chunk(0), Some(honest)),
        (chunk(1), Some(forger)),
        (chunk(2), Some(honest)),
        (forged, Some(forger)),
        (chunk(4), Some(honest)),
        // The same chunk twice in one burst is stored once.
        (chunk(4), Some(forger)),
    ];
    let answers = shared.accept_chunks(batch, Path::Pull);
    assert_eq!(answers.len(), 6);
    for (i, a) in answers.iter().enumerate() {
        match i {
            3 => assert!(
                matches!(a, Accepted::Rejected(why) if why.contains("signature")),
                "chunk 3: {a:?}"
            ),
            5 => assert_eq!(a, &Accepted::Duplicate),
            _ => assert_eq!(a, &Accepted::Stored, "chunk {i}"),
        }
    }
    let now = Instant::now();
    for seq in [0, 1, 2, 4] {
        assert!(shared.store.contains(&ChunkId::new(stream, seq), now));
    }
    assert!(!shared.store.contains(&ChunkId::new(stream, 3), now));
    let (forger_score, honest_score) = {
        let reputation = shared.reputation.lock();
        (reputation.score(forger, now), reputation.score(honest, now))
    };
    assert!(forger_score > 0.0, "the forger is struck");
    assert_eq!(honest_score, 0.0, "the honest sender is not");
    c.stop().await;
}
