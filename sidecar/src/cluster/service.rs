//! The gRPC service other members and clients call. Every call is answered
//! from this member's own store and never forwarded, so no request loops.
//! What a caller may do depends on its [`Role`]: a client pings, reads and
//! offers the answers to its own requests; everything else is member-only.

use std::net::SocketAddr;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::flight::{ClaimAnswer, ClaimReplies};
use super::listener;
use super::proto::cluster_server::{Cluster as ClusterRpc, ClusterServer};
use super::proto::{
    ClaimRequest, ClearReply, ClearRequest, DeleteReply, DeleteRequest, FeedMessage, FeedReply,
    GetManyReply, GetManyRequest, GetReply, GetRequest, KeyVersion, PingReply, PingRequest,
    PurgeReply, PurgeRequest, ReleaseReply, ReleaseRequest, ScanRequest, SetBatchReply,
    SetBatchRequest, SetManyReply, SetManyRequest, SetOutcome, SetReply, SetRequest, VersionsReply,
    VersionsRequest,
};
use super::replication::Kept;
use super::security::{server_tls, Authenticate, Role, MAX_MESSAGE_BYTES};
use super::wire::{
    entry_from_wire, entry_to_wire, failure_from_wire, key_from_wire, origin_from_wire,
    version_from_wire, version_to_wire,
};
use super::{Cluster, ClusterError, OriginScope};
use crate::entry::filter::EntryFilter;
use crate::entry::CachedResponse;
use crate::key::CacheKey;
use crate::tier::Tier;

/// Most keys one batched call may carry.
const MAX_BATCH_KEYS: usize = 4096;

/// Binds `cache.ha.bind_addr` and serves the cluster protocol until the
/// cluster stops. Returns the bound address.
pub async fn serve(cluster: Arc<Cluster>) -> Result<SocketAddr, ClusterError> {
    let addr = cluster.settings.bind_addr.clone();
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| ClusterError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ClusterError::Bind { addr, source })?;
    let tls = server_tls(&cluster.settings.tls)?;
    let service = tonic::service::interceptor::InterceptedService::new(
        ClusterServer::new(Service(Arc::clone(&cluster)))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        Authenticate::new(&cluster.settings, Arc::clone(&cluster.metrics)),
    );
    tokio::spawn(listener::Port::new(service, tls).serve(listener, cluster.stopping()));
    Ok(bound)
}

/// The service implementation.
struct Service(Arc<Cluster>);

fn bad_key() -> Status {
    Status::invalid_argument("a key must be 32 bytes (the x-relaycache-key hash)")
}

fn too_many(n: usize) -> Status {
    Status::invalid_argument(format!(
        "{n} keys in one call; send at most {MAX_BATCH_KEYS}"
    ))
}

/// The caller's role, as [`Authenticate`] found it; a request that did not
/// pass through it gets the least.
fn role_of<T>(request: &Request<T>) -> Role {
    request
        .extensions()
        .get::<Role>()
        .copied()
        .unwrap_or(Role::Client)
}

impl Service {
    /// Refuses (and counts) a member-only call from a client.
    fn members_only<T>(&self, request: &Request<T>, call: &str) -> Result<(), Status> {
        if role_of(request) == Role::Member {
            return Ok(());
        }
        self.0
            .metrics
            .cluster
            .count_refusal(crate::metrics::ClusterRefusal::MemberOnly);
        Err(Status::permission_denied(format!(
            "{call} is for cluster members (cache.ha.token); a client (cache.ha.client_token) may ping, read, and set the answer to its own request with its origin"
        )))
    }

    /// A client's call about `key` must come with the request it answers
    /// (`origin`), whose key must be `key`.
    fn own_request_of_client(
        &self,
        role: Role,
        key: &CacheKey,
        origin: Option<super::proto::Origin>,
        call: &str,
    ) -> Result<Option<OriginScope>, Status> {
        if role == Role::Member {
            return Ok(None);
        }
        let origin = origin.and_then(origin_from_wire);
        if self.0.is_own_request(key, origin.as_ref()) {
            return Ok(origin.and_then(|origin| self.0.scope_of_origin(&origin)));
        }
        Err(Status::permission_denied(format!(
            "a client may {call} only for its own request: send the request's origin, whose key must be the entry's key"
        )))
    }

    /// One write, from Set or SetBatch: the entry is stored unless a newer
    /// copy is held (true if stored); a client's write must carry its
    /// request's origin, whose scope the entry takes.
    fn apply_set(&self, role: Role, request: SetRequest) -> Result<bool, Status> {
        let wire = request
            .entry
            .ok_or_else(|| Status::invalid_argument("set needs an entry"))?;
        let Some((key, mut entry)) = entry_from_wire(&wire) else {
            // Expired in flight, or malformed: nothing to keep.
            return Ok(false);
        };
        let scope = self.own_request_of_client(role, &key, request.origin, "store an answer")?;
        if let Some((tenant, namespace)) = scope {
            // A client's word on whose answer it is counts for nothing:
            // the scope is the origin's, as the key is.
            entry.tenant = Some(tenant);
            entry.namespace = namespace;
        }
        Ok(self.store(key, entry, request.admit_to_reserve))
    }

    /// Stores an entry unless a newer copy is held. True if stored. Either
    /// way, a flight another process leads here for the key lands with
    /// the copy held.
    fn store(&self, key: CacheKey, entry: CachedResponse, admit_to_reserve: bool) -> bool {
        let cluster = &self.0;
        match cluster.keep_newer(key, entry) {
            Kept::Stored(entry) => {
                if let (true, Some(reserve)) = (admit_to_reserve, &cluster.reserve) {
                    reserve.admit(key, &entry);
                }
                cluster.land_remote_lead(&key, &entry);
                true
            }
            Kept::HeldAlready(held) => {
                cluster.land_remote_lead(&key, &held);
                false
            }
            Kept::Refused => false,
        }
    }
}

#[tonic::async_trait]
impl ClusterRpc for Service {
    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        let cluster = &self.0;
        let role = role_of(&request);
        let request = request.into_inner();
        cluster.observe(version_from_wire(request.clock.as_ref()));
        // Only a member's ping can make a member: a client (or anyone
        // holding only the clients' token) is answered, never joined.
        if cluster.settings.embedded
            && role == Role::Member
            && !request.from.is_empty()
            && !cluster.membership.learn(&request.from)
        {
            cluster
                .metrics
                .cluster
                .count_refusal(crate::metrics::ClusterRefusal::NotAPeer);
        }
        Ok(Response::new(PingReply {
            id: cluster.self_id.as_deref().unwrap_or_default().to_string(),
            leaving: cluster.is_leaving(),
            members: cluster.membership.live_ids(),
            clock: Some(version_to_wire(cluster.clock.tick())),
        }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetReply>, Status> {
        let key = key_from_wire(&request.get_ref().key).ok_or_else(bad_key)?;
        let stale_within = std::time::Duration::from_millis(request.get_ref().stale_within_ms);
        let memory = &self.0.memory;
        let entry = memory
            .lookup(&key)
            .or_else(|| {
                (!stale_within.is_zero())
                    .then(|| memory.lookup_stale(&key, stale_within))
                    .flatten()
            })
            .map(|e| entry_to_wire(&key, &e));
        Ok(Response::new(GetReply { entry }))
    }

    async fn get_many(
        &self,
        request: Request<GetManyRequest>,
    ) -> Result<Response<GetManyReply>, Status> {
        let keys = &request.get_ref().keys;
        if keys.len() > MAX_BATCH_KEYS {
            return Err(too_many(keys.len()));
        }
        let mut entries = Vec::new();
        for raw in keys {
            let key = key_from_wire(raw).ok_or_else(bad_key)?;
            if let Some(entry) = self.0.memory.lookup(&key) {
                entries.push(entry_to_wire(&key, &entry));
            }
        }
        Ok(Response::new(GetManyReply { entries }))
    }

    async fn set(&self, request: Request<SetRequest>) -> Result<Response<SetReply>, Status> {
        let role = role_of(&request);
        let stored = self.apply_set(role, request.into_inner())?;
        Ok(Response::new(SetReply { stored }))
    }

    async fn set_batch(
        &self,
        request: Request<SetBatchRequest>,
    ) -> Result<Response<SetBatchReply>, Status> {
        let role = role_of(&request);
        let writes = request.into_inner().writes;
        if writes.len() > MAX_BATCH_KEYS {
            return Err(too_many(writes.len()));
        }
        let outcomes = writes
            .into_iter()
            .map(|write| match self.apply_set(role, write) {
                Ok(stored) => SetOutcome {
                    stored,
                    refused: String::new(),
                },
                Err(status) => SetOutcome {
                    stored: false,
                    refused: status.message().to_string(),
                },
            })
            .collect();
        Ok(Response::new(SetBatchReply { outcomes }))
    }

    async fn set_many(
        &self,
        request: Request<SetManyRequest>,
    ) -> Result<Response<SetManyReply>, Status> {
        self.members_only(&request, "SetMany")?;
        let entries = request.into_inner().entries;
        if entries.len() > MAX_BATCH_KEYS {
            return Err(too_many(entries.len()));
        }
        let mut stored = 0u32;
        for wire in &entries {
            if let Some((key, entry)) = entry_from_wire(wire) {
                stored += u32::from(self.store(key, entry, false));
            }
        }
        Ok(Response::new(SetManyReply { stored }))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteReply>, Status> {
        self.members_only(&request, "Delete")?;
        let key = key_from_wire(&request.get_ref().key).ok_or_else(bad_key)?;
        let removed = self.0.memory.delete(&key).await.unwrap_or(false);
        Ok(Response::new(DeleteReply { removed }))
    }

    async fn purge(&self, request: Request<PurgeRequest>) -> Result<Response<PurgeReply>, Status> {
        self.members_only(&request, "Purge")?;
        let filter = EntryFilter::from_query(&request.get_ref().filter)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        let removed = self.0.memory.purge_matching(&filter);
        tracing::info!(%filter, removed, "purged by a cluster purge");
        Ok(Response::new(PurgeReply { removed }))
    }

    async fn clear(&self, request: Request<ClearRequest>) -> Result<Response<ClearReply>, Status> {
        self.members_only(&request, "Clear")?;
        self.0
            .memory
            .clear()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        tracing::info!("cleared by a cluster purge");
        Ok(Response::new(ClearReply {}))
    }

    type ClaimStream = ClaimReplies;

    async fn claim(
        &self,
        request: Request<ClaimRequest>,
    ) -> Result<Response<Self::ClaimStream>, Status> {
        let role = role_of(&request);
        let request = request.into_inner();
        let key = key_from_wire(&request.key).ok_or_else(bad_key)?;
        // A copy held is what `Get` gives any caller allowed to call it, so
        // it needs no origin: the origin guards the flight (joining it,
        // leading it), and checking it costs a parse and a hash of the
        // request.
        if let Some(entry) = self.0.memory.lookup(&key) {
            return Ok(Response::new(
                ClaimAnswer::held(&key, &entry).into_replies(),
            ));
        }
        self.own_request_of_client(role, &key, request.origin, "claim a flight")?;
        let wait = std::time::Duration::from_millis(request.wait_ms);
        let answer = self.0.serve_claim(key, wait).await;
        Ok(Response::new(answer.into_replies()))
    }

    async fn feed(
        &self,
        request: Request<tonic::Streaming<FeedMessage>>,
    ) -> Result<Response<FeedReply>, Status> {
        self.0.serve_feed(request.into_inner()).await?;
        Ok(Response::new(FeedReply {}))
    }

    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseReply>, Status> {
        let request = request.into_inner();
        let key = key_from_wire(&request.key).ok_or_else(bad_key)?;
        let failure = match request.failure {
            Some(wire) => Some(failure_from_wire(wire).ok_or_else(|| {
                Status::invalid_argument(
                    "a released flight's failure must be a 429 or 5xx with at most 64 KiB of body",
                )
            })?),
            None => None,
        };
        // The lease is the proof: only the claim that led knows it.
        let released = self.0.release_remote_lead(&key, request.lease, failure);
        Ok(Response::new(ReleaseReply { released }))
    }

    type ScanStream = super::warmup::ScanReplies;

    async fn scan(
        &self,
        request: Request<ScanRequest>,
    ) -> Result<Response<Self::ScanStream>, Status> {
        self.members_only(&request, "Scan")?;
        Ok(Response::new(self.0.scan_replies(request.get_ref())?))
    }

    async fn versions(
        &self,
        request: Request<VersionsRequest>,
    ) -> Result<Response<VersionsReply>, Status> {
        self.members_only(&request, "Versions")?;
        let keys = &request.get_ref().keys;
        if keys.len() > MAX_BATCH_KEYS {
            return Err(too_many(keys.len()));
        }
        let mut versions = Vec::with_capacity(keys.len());
        for raw in keys {
            let key = key_from_wire(raw).ok_or_else(bad_key)?;
            versions.push(KeyVersion {
                key: raw.clone(),
                version: self
                    .0
                    .memory
                    .lookup(&key)
                    .map(|e| version_to_wire(e.version)),
            });
        }
        Ok(Response::new(VersionsReply { versions }))
    }
}
