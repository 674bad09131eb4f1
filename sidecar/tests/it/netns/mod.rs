//! Hosts for HA tests: three `relaycache` members, each in a network
//! namespace of its own, joined by a bridge. Needs root (CAP_NET_ADMIN) and
//! the `ip` tool; where the kernel or the environment refuses, [`Net::create`]
//! says why and the test skips.
//!
//! Topology (PREFIX is `rc-PID` plus the test's tag, so that tests running
//! at once, in one process or several, use different names and addresses):
//!
//! ```text
//!   namespace PREFIX-s:  bridge br0 with ports pa, pb, pc (the "switch")
//!   namespace PREFIX-X:  cX  10.213.N.(i+1)/24, on the bridge: gRPC between members
//!     (member i = 0, 1, 2) m0  10.214.N.(4i+2)/30, paired with a link in the test's
//!                        namespace at 10.214.N.(4i+1)/30: HTTP traffic and admin
//!                        from the test, and the member's way to the mock upstream
//! ```
//!
//! Cutting a member's bridge port partitions it from the others while the
//! test still reaches it over its own link. The bridge sits in a namespace
//! of its own so that the host's firewall (a FORWARD policy of DROP with
//! bridge netfilter, as Docker sets up) never sees the members' traffic.
//!
//! Names: [`Net::set_hosts`] writes `/etc/netns/NS/hosts`, which
//! `ip netns exec NS` bind-mounts over `/etc/hosts` for the member it
//! starts, so members can name each other as pods of a headless Service do,
//! and a name can move to another address while they run.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

use crate::common::*;
use relaycache::config::Config;

/// Why the namespaces could not be made; the test is skipped with it.
pub(crate) struct Refused(pub String);

/// Runs `ip ARGS...`; an error names the command and what `ip` said.
pub(crate) fn ip(args: &[&str]) -> Result<(), Refused> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| Refused(format!("cannot run `ip {}`: {e}", args.join(" "))))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Refused(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// The member names, in index order.
pub(crate) const MEMBERS: [char; 3] = ['a', 'b', 'c'];

/// The namespaces and links of one test. Dropping it deletes them, which
/// also removes every veth (a veth goes with either end's namespace), and
/// the hosts files it wrote, so nothing is left behind when a test fails
/// halfway.
pub(crate) struct Net {
    prefix: String,
    /// Third octet of both subnets.
    octet: u32,
    namespaces: Vec<String>,
}

impl Net {
    /// Builds the topology. `tag` (a lower-case letter) tells apart tests
    /// of one process; `index` (0..=2) keeps their subnets apart.
    pub(crate) fn create(tag: char, index: u32) -> Result<Self, Refused> {
        let pid = std::process::id();
        let mut net = Self {
            prefix: format!("rc-{pid}{tag}"),
            octet: (pid * 3 + index) % 250 + 1,
            namespaces: Vec::new(),
        };
        net.build()?;
        Ok(net)
    }

    /// The namespace member `member` runs in.
    pub(crate) fn namespace(&self, member: char) -> String {
        format!("{}-{member}", self.prefix)
    }

    fn switch(&self) -> String {
        format!("{}-s", self.prefix)
    }

    /// This member's address on the bridge (its gRPC address).
    pub(crate) fn cluster_ip(&self, index: usize) -> String {
        self.bridge_ip(index as u32 + 1)
    }

    /// An address on the bridge's subnet by its last octet.
    pub(crate) fn bridge_ip(&self, last: u32) -> String {
        format!("10.213.{}.{last}", self.octet)
    }

    /// The test's end of this member's own link (where the mock listens).
    pub(crate) fn host_ip(&self, index: usize) -> String {
        format!("10.214.{}.{}", self.octet, 4 * index + 1)
    }

    /// The member's end of its own link (its traffic and admin listeners).
    pub(crate) fn member_ip(&self, index: usize) -> String {
        format!("10.214.{}.{}", self.octet, 4 * index + 2)
    }

    fn add_namespace(&mut self, name: String) -> Result<(), Refused> {
        // A namespace left by a killed run with a recycled pid would make
        // `add` fail; it is ours by name, so it goes.
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name])?;
        self.namespaces.push(name);
        Ok(())
    }

    fn build(&mut self) -> Result<(), Refused> {
        let switch = self.switch();
        self.add_namespace(switch.clone())?;
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        for (i, member) in MEMBERS.into_iter().enumerate() {
            let ns = self.namespace(member);
            self.add_namespace(ns.clone())?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let (inside, port) = (format!("c{member}"), format!("p{member}"));
            ip(&[
                "link", "add", &inside, "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &switch,
            ])?;
            ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"])?;
            let cluster = format!("{}/24", self.cluster_ip(i));
            ip(&["-n", &ns, "addr", "add", &cluster, "dev", &inside])?;
            ip(&["-n", &ns, "link", "set", &inside, "up"])?;

            let host_end = format!("{}{member}", self.prefix.replace('-', ""));
            let _ = ip(&["link", "del", &host_end]);
            ip(&[
                "link", "add", &host_end, "type", "veth", "peer", "name", "m0", "netns", &ns,
            ])?;
            let (host_cidr, member_cidr) = (
                format!("{}/30", self.host_ip(i)),
                format!("{}/30", self.member_ip(i)),
            );
            ip(&["addr", "add", &host_cidr, "dev", &host_end])?;
            ip(&["link", "set", &host_end, "up"])?;
            ip(&["-n", &ns, "addr", "add", &member_cidr, "dev", "m0"])?;
            ip(&["-n", &ns, "link", "set", "m0", "up"])?;
        }
        Ok(())
    }

    /// Takes member `member`'s port on the bridge down or up.
    pub(crate) fn set_port(&self, member: char, up: bool) {
        let port = format!("p{member}");
        let state = if up { "up" } else { "down" };
        if let Err(Refused(why)) = ip(&["-n", &self.switch(), "link", "set", &port, state]) {
            panic!("cannot set the bridge port of member {member} {state}: {why}");
        }
    }

    /// Gives member `index` the bridge address with last octet `last`
    /// instead of the one it had, as a pod that comes back gets a new IP.
    pub(crate) fn move_member(&self, index: usize, last: u32) {
        let member = MEMBERS[index];
        let ns = self.namespace(member);
        let device = format!("c{member}");
        let cidr = format!("{}/24", self.bridge_ip(last));
        for args in [
            vec!["-n", &ns, "addr", "flush", "dev", &device],
            vec!["-n", &ns, "addr", "add", &cidr, "dev", &device],
        ] {
            if let Err(Refused(why)) = ip(&args) {
                panic!("cannot move member {member} to {cidr}: {why}");
            }
        }
    }

    /// Writes the same hosts file (`address name` pairs) for every member:
    /// what `ip netns exec` shows a member as its `/etc/hosts`. The file is
    /// rewritten in place, so members already running see the change on
    /// their next lookup (a bind mount holds on to the file, not the path).
    pub(crate) fn set_hosts(&self, entries: &[(String, String)]) -> Result<(), Refused> {
        let mut text = String::from("127.0.0.1 localhost\n");
        for (address, name) in entries {
            text.push_str(&format!("{address} {name}\n"));
        }
        for member in MEMBERS {
            let dir = self.etc_dir(member);
            std::fs::create_dir_all(&dir)
                .map_err(|e| Refused(format!("cannot create {}: {e}", dir.display())))?;
            let path = dir.join("hosts");
            std::fs::write(&path, &text)
                .map_err(|e| Refused(format!("cannot write {}: {e}", path.display())))?;
        }
        Ok(())
    }
}

impl Net {
    /// Where `ip netns exec` looks for this member's files for `/etc`.
    fn etc_dir(&self, member: char) -> PathBuf {
        PathBuf::from("/etc/netns").join(self.namespace(member))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            if let Err(Refused(why)) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {why}");
            }
        }
        // Ours by name, whether or not this run wrote them.
        for member in MEMBERS {
            let dir = self.etc_dir(member);
            if dir.exists() {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    eprintln!("cleanup: cannot remove {}: {e}", dir.display());
                }
            }
        }
    }
}

/// A `relaycache` process running inside a network namespace.
pub(crate) struct Member {
    /// Its letter (`a`, `b`, `c`).
    pub name: char,
    /// The process.
    pub relay: Relay,
}

impl Member {
    /// Starts relaycache in `namespace` with `config` and waits until it
    /// listens. `ip netns exec` execs the program after entering the
    /// namespace, so the child's pid is relaycache's own and kill reaches it.
    pub(crate) fn start(name: char, namespace: &str, config: &Config) -> Self {
        Self {
            name,
            relay: Relay::start_prefixed(config, &["ip", "netns", "exec", namespace]),
        }
    }

    /// POSTs `body` to `/v1/messages` with the test credential.
    pub(crate) async fn post(&self, body: &str) -> Reply {
        post_messages(&self.relay, "k", body, &[]).await
    }

    /// GETs an admin path.
    pub(crate) async fn admin_get(&self, path: &str) -> Reply {
        get(&self.relay.admin_url(path)).await
    }

    /// Its `/stats`.
    pub(crate) async fn stats(&self) -> serde_json::Value {
        self.relay.stats().await
    }

    /// The `cluster` object of `/stats`, one field.
    pub(crate) async fn cluster(&self, field: &str) -> serde_json::Value {
        self.stats().await["cluster"][field].clone()
    }

    /// Polls `/stats` until `pick` holds.
    pub(crate) async fn wait_for(
        &self,
        what: &str,
        pick: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        self.relay
            .wait_for_stats(&format!("member {}: {what}", self.name), pick)
            .await
    }

    /// Polls `/stats` until the member sees `n` live members.
    pub(crate) async fn wait_for_members(&self, n: u64) -> serde_json::Value {
        self.wait_for(&format!("{n} live members"), |s| {
            s["cluster"]["members"] == n
        })
        .await
    }

    /// Every log line so far.
    pub(crate) fn logs(&self) -> Vec<String> {
        self.relay.logs()
    }
}
