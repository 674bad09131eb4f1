//! HA mode with members named as a headless Service names its pods: each
//! peer is a host name, and a member that comes back under its name at a
//! new address (a restarted pod gets a new IP) is found again, because
//! names are resolved on every reconnect rather than once at start.
//!
//! Real processes in network namespaces (see `netns/mod.rs`); the names
//! come from a per-namespace hosts file that the test rewrites, standing in
//! for cluster DNS. Skipped with a message where namespaces cannot be made.

use crate::common::*;
use crate::netns::{Member, Net, Refused, MEMBERS};

fn peer_name(member: char) -> String {
    format!("member-{member}.peers.test")
}

#[tokio::test]
async fn a_member_back_under_its_name_at_a_new_address_is_found_again() {
    let net = match Net::create('n', 1) {
        Ok(net) => net,
        Err(Refused(why)) => {
            eprintln!(
                "skipped: cannot create network namespaces and veth pairs here ({why}); \
                 the test needs root (or CAP_NET_ADMIN) and the `ip` tool from iproute2"
            );
            return;
        }
    };
    let mut hosts: Vec<(String, String)> = MEMBERS
        .iter()
        .enumerate()
        .map(|(i, &m)| (net.cluster_ip(i), peer_name(m)))
        .collect();
    if let Err(Refused(why)) = net.set_hosts(&hosts) {
        eprintln!("skipped: cannot give the namespaces a hosts file ({why})");
        return;
    }

    let upstream = MockUpstream::start("0.0.0.0:0", MockOptions::default())
        .await
        .expect("mock upstream");
    let port = upstream.addr.port();
    let peers: Vec<String> = MEMBERS
        .iter()
        .map(|&m| format!("{}:3320", peer_name(m)))
        .collect();
    let config_of = |i: usize| {
        let upstream_url = format!("http://{}:{port}", net.host_ip(i));
        // Listens on every address of its namespace, so a new IP needs no
        // new config: only the name is what the others know it by.
        let mut config = member_config(&upstream_url, "0.0.0.0:3320", &peers, 2);
        config.cache.ha.advertise_addr = peers[i].clone();
        config.server.listen = format!("{}:0", net.member_ip(i));
        config.server.admin_listen = format!("{}:0", net.member_ip(i));
        config
    };
    let mut members: Vec<Member> = MEMBERS
        .iter()
        .enumerate()
        .map(|(i, &m)| Member::start(m, &net.namespace(m), &config_of(i)))
        .collect();
    for member in &members {
        member.wait_for_members(3).await;
    }
    let before = question("stored before the move");
    assert_eq!(members[0].post(&before).await.cache_status(), "miss");
    members[0]
        .wait_for("the first write", |s| s["cluster"]["writes"] == 1)
        .await;

    // C leaves (SIGTERM: it hands its entries off), and its name moves to
    // an address that did not exist before; the old one is gone.
    members[2].relay.terminate();
    let status = members[2]
        .relay
        .wait_exit(std::time::Duration::from_secs(20));
    assert!(status.success(), "member c exited with {status}");
    for member in &members[..2] {
        member.wait_for_members(2).await;
    }
    let moved_to = net.bridge_ip(103);
    net.move_member(2, 103);
    hosts[2].0 = moved_to.clone();
    net.set_hosts(&hosts)
        .unwrap_or_else(|Refused(why)| panic!("cannot rewrite the hosts file: {why}"));
    members[2] = Member::start('c', &net.namespace('c'), &config_of(2));

    // A and B dialled C's name before; they find it at its new address
    // (nothing answers at the old one any more).
    for member in &members {
        member.wait_for_members(3).await;
    }
    // The cluster is whole again: what C stores is a hit through A and B,
    // and C answers what was stored before it moved.
    let after = question("stored through the moved member");
    assert_eq!(members[2].post(&after).await.cache_status(), "miss");
    members[2]
        .wait_for("the write through c", |s| s["cluster"]["writes"] == 1)
        .await;
    assert_eq!(members[2].cluster("write_quorum_failures").await, 0);
    for member in &members[..2] {
        let reply = member.post(&after).await;
        assert_eq!((reply.status, reply.cache_status()), (200, "hit"));
    }
    let reply = members[2].post(&before).await;
    assert_eq!((reply.status, reply.cache_status()), (200, "hit"));
    assert_eq!(upstream.calls(), 2, "each answer was paid for once");
    println!("member c moved to {moved_to} and rejoined under its name");
}
