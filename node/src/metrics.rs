//! The node's Prometheus registry: every metric's name, labels and help text.
//!
//! One [`Metrics`] value per node, shared by every part that counts something.
//! Names follow Prometheus conventions (`dcdn_` prefix, `_total` for counters,
//! `_bytes` and `_seconds` units). Values that other parts already keep (store
//! statistics, peer states, the key-ring generation) are copied in at scrape
//! time by the caller through the `set_*` methods, so the hot paths keep one
//! source of truth and pay nothing per chunk for them. Serving `/metrics` is
//! the admin module's job.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Why the registry could not be built or rendered.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("registering metric {name}")]
    Register {
        name: &'static str,
        #[source]
        source: prometheus::Error,
    },
    #[error("encoding metrics")]
    Encode(#[source] prometheus::Error),
}

/// Every metric a node exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Chunks moved, by `direction` (in/out) and `path` (push/pull/http/ingest).
    pub chunks: IntCounterVec,
    /// Bytes moved, by `direction` and `path`.
    pub bytes: IntCounterVec,
    /// Chunks that passed verification.
    pub chunks_verified: IntCounterVec,
    /// Chunks refused, by `reason` (signature, digest, revoked, replay, expired, ...).
    pub chunks_rejected: IntCounterVec,
    /// FEC groups by `outcome` (complete, rebuilt, failed, dropped).
    pub fec_groups: IntCounterVec,
    /// `dcdn_push_shards_total`: pushed FEC shards `expected` (every shard
    /// of each group whose first shard arrived) and `received`, the push
    /// path's realized loss, what the loss reports to the upstream say,
    /// summed since start. Both series resolved once: they count every
    /// datagram.
    pub push_shards_expected: IntCounter,
    pub push_shards_received: IntCounter,
    /// Parity shards per group currently sent, the most over peers of a
    /// `peer_class` (per peer: `dcdn admin peers`; a peer label would keep a
    /// series for every peer ever seen).
    pub fec_parity: IntGaugeVec,
    /// Repair fetches by `outcome` (ok, failed).
    pub repairs: IntCounterVec,
    /// Live chunks missed by push (a gap after an outage) and pulled in the
    /// background, by `outcome` (pulled, failed, skipped: too many gaps at once).
    pub catch_up: IntCounterVec,
    /// An origin's upstream fetches (pull-through) by `kind` (http, s3) and
    /// `result` (fetched, not_modified, not_found, stale, error, timeout,
    /// status, busy, too_large, ingest).
    pub upstream_fetches: IntCounterVec,
    /// Requests an origin answered 404 from a remembered upstream 404,
    /// without asking the upstream, by upstream `kind`.
    pub upstream_not_found_cached: IntCounterVec,
    /// Store figures copied from the store's stats at scrape time (the
    /// counters advance by the difference, so they stay counters).
    pub store_bytes: IntGauge,
    pub store_chunks: IntGauge,
    pub store_evictions: IntCounter,
    pub store_expirations: IntCounter,
    pub store_hits: IntCounter,
    pub store_misses: IntCounter,
    /// Connected peers by `state` (choked, unchoked); `banned` counts the
    /// bans in force, connected or not (a banned peer is kept out).
    pub peers: IntGaugeVec,
    /// Smoothed QUIC round-trip time by `peer_class` (origin, relay, edge).
    pub quic_rtt_seconds: prometheus::GaugeVec,
    /// QUIC packets lost by `peer_class`, counted at scrape time from each
    /// connection's own count.
    pub quic_lost_packets: IntCounterVec,
    /// MTU black holes QUIC judged by `peer_class`, counted at scrape time:
    /// each one cut the path's MTU to the minimum (see `mesh::push_chunk`).
    pub quic_black_holes: IntCounterVec,
    /// Mesh handshakes refused, by `reason`.
    pub handshakes_refused: IntCounterVec,
    /// Input from banned peers refused, by `path` (handshake, hello,
    /// datagram, control, request).
    pub banned_refused: IntCounterVec,
    /// Requests refused for their credentials, by `api` (admin, ingest) and
    /// `reason` (no_token, malformed_authorization, bad_token, forbidden).
    pub auth_refused: IntCounterVec,
    /// HTTP requests by `route` and `status`.
    pub http_requests: IntCounterVec,
    /// HTTP connections refused or cut, by `listener` (http, http3, admin)
    /// and `reason` (per_ip_limit, header_timeout, idle_timeout,
    /// tls_handshake, tls_handshake_timeout).
    pub http_refused: IntCounterVec,
    /// HTTP latency by `route`.
    pub http_duration: HistogramVec,
    /// Bytes this origin sent to the mesh divided by bytes ingested (origin only).
    pub origin_offload_ratio: prometheus::Gauge,
    /// The key ring's generation.
    pub keyring_generation: IntGauge,
    /// Peer frames that could not be decoded, by `kind` of failure.
    pub frames_malformed: IntCounterVec,
    /// Trust-bundle reloads (file change, SIGHUP, admin) by `result` (ok, failed).
    pub trust_bundle_reloads: IntCounterVec,
    /// HTTPS certificate reloads after the files changed, by `result` (ok,
    /// failed: the old certificates were kept).
    pub tls_reloads: IntCounterVec,
    /// The earliest notAfter of the HTTPS certificates in use, Unix seconds
    /// (0 without `[http_tls]`).
    pub tls_cert_expiry: IntGauge,
    /// Always 1, labelled with the `version` and `commit` this binary is.
    pub build_info: IntGaugeVec,
    /// Live file versions taken into this node's window, by `stream` and
    /// `kind` (playlist, mpd, segment). Streams are bounded by
    /// `live.max_streams`, and a stream's labels go when it is forgotten.
    pub live_files: IntCounterVec,
    /// Live files served to players (edges), by `stream` and `kind`.
    pub live_served: IntCounterVec,
    /// Live publishes or files refused, by `reason`.
    pub live_refused: IntCounterVec,
    /// Live segments dropped because they left the DVR window.
    pub live_expired: IntCounter,
    /// Bytes of live files held, by `stream` (set at scrape time).
    pub live_held_bytes: IntGaugeVec,
    /// From the origin signing a segment's manifest to this node taking it
    /// in, seconds: the edge-side latency a player waits beyond the upload.
    pub live_segment_delay: prometheus::Histogram,
    /// LL-HLS requests an edge holds now (blocking playlist reloads and
    /// preload-hinted parts), by `stream`.
    pub live_held: IntGaugeVec,
    /// LL-HLS requests that waited, by `stream`, `kind` (reload, hint) and
    /// `result` (released, timed_out).
    pub live_blocking: IntCounterVec,
    /// Payload bytes an edge's swarm pulled, by the sending peer's role.
    pub swarm_bytes: IntCounterVec,
    /// Swarms by how they ended or why they were refused.
    pub swarms: IntCounterVec,
    /// Pull requests from edges a relay answered "busy" (its uplink's
    /// queue was past the admission bound, `p2p::admission`).
    pub pulls_busy: IntCounter,
    /// Chunks held and wanted by the swarms running now (preheat progress).
    pub swarm_chunks: IntGaugeVec,
    /// Preheat requests by outcome.
    pub preheats: IntCounterVec,
    /// Object uploads at an origin by event: opened, completed, aborted,
    /// refused_too_many.
    pub uploads: IntCounterVec,
    /// Clients reading an upload still in progress at an edge, by outcome:
    /// complete, reset, refused_too_many.
    pub upload_reads: IntCounterVec,
}

impl Metrics {
    /// Builds the registry with every metric registered; `role` becomes a
    /// constant label on all of them.
    pub fn new(role: &str) -> Result<Self, MetricsError> {
        let registry = Registry::new_custom(
            None,
            Some(std::iter::once(("role".to_owned(), role.to_owned())).collect()),
        )
        .map_err(|source| MetricsError::Register {
            name: "registry",
            source,
        })?;
        let r = &registry;
        // process_cpu_seconds_total, process_resident_memory_bytes, ...: the
        // names every Prometheus client exports, so stock dashboards work.
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .map_err(|source| MetricsError::Register {
            name: "process",
            source,
        })?;
        let push_shards = counter(
            r,
            "dcdn_push_shards_total",
            "Pushed FEC shards expected (all of each group seen) and received: 1 - received/expected is the push path's loss.",
            &["count"],
        )?;
        Ok(Self {
            push_shards_expected: push_shards.with_label_values(&["expected"]),
            push_shards_received: push_shards.with_label_values(&["received"]),
            swarm_bytes: counter(
                r,
                "dcdn_swarm_bytes_total",
                "Payload bytes an edge pulled while swarming an object, by the sender's role (edge, relay, origin).",
                &["from"],
            )?,
            pulls_busy: counter1(
                r,
                "dcdn_pulls_busy_total",
                "Pull requests from edges this relay answered busy: the pull replies queued on its uplink took longer than the admission bound to send.",
            )?,
            swarms: counter(
                r,
                "dcdn_swarms_total",
                "Object swarms by outcome: started, complete, stopped (shutdown or purge), refused_too_large, refused_busy, refused_pieces.",
                &["outcome"],
            )?,
            swarm_chunks: gauge_vec(
                r,
                "dcdn_swarm_chunks",
                "Chunks of the objects being swarmed now: held and total.",
                &["state"],
            )?,
            uploads: counter(
                r,
                "dcdn_uploads_total",
                "Object uploads at an origin by event: opened (an open manifest signed), completed, aborted (an abort signed), refused_too_many.",
                &["event"],
            )?,
            upload_reads: counter(
                r,
                "dcdn_upload_reads_total",
                "Reads of an upload still in progress at an edge, by outcome: complete (digest checked, body ended), reset (body reset: aborted, stalled or mismatched), refused_too_many.",
                &["outcome"],
            )?,
            preheats: counter(
                r,
                "dcdn_preheats_total",
                "Preheat requests by outcome: sent (origin), forwarded (relay), started (edge), refused_not_upstream, refused_signature, refused_stale, refused_swarm_off, other_version, unknown_object.",
                &["outcome"],
            )?,
            chunks: counter(
                r,
                "dcdn_chunks_total",
                "Chunks moved by direction and path.",
                &["direction", "path"],
            )?,
            bytes: counter(
                r,
                "dcdn_bytes_total",
                "Payload bytes moved by direction and path.",
                &["direction", "path"],
            )?,
            chunks_verified: counter(
                r,
                "dcdn_chunks_verified_total",
                "Chunks that passed signature, digest and key-state checks.",
                &["source"],
            )?,
            chunks_rejected: counter(
                r,
                "dcdn_chunks_rejected_total",
                "Chunks refused, by reason.",
                &["reason"],
            )?,
            fec_groups: counter(
                r,
                "dcdn_fec_groups_total",
                "FEC groups by outcome: complete (no loss), rebuilt (parity used), failed, dropped.",
                &["outcome"],
            )?,
            fec_parity: gauge_vec(
                r,
                "dcdn_fec_parity_shards",
                "Parity shards per FEC group currently sent, the most over connected peers of a class.",
                &["peer_class"],
            )?,
            repairs: counter(
                r,
                "dcdn_repairs_total",
                "Chunks fetched over a reliable stream because push did not deliver them.",
                &["outcome"],
            )?,
            catch_up: counter(
                r,
                "dcdn_catch_up_chunks_total",
                "Pushed chunks that did not arrive whole (a gap after an outage, a FEC group that could not be rebuilt), pulled in the background: pulled, failed, skipped.",
                &["outcome"],
            )?,
            upstream_fetches: counter(
                r,
                "dcdn_upstream_fetches_total",
                "An origin's fetches from its upstream (pull-through), by upstream kind and result.",
                &["kind", "result"],
            )?,
            upstream_not_found_cached: counter(
                r,
                "dcdn_upstream_not_found_cached_total",
                "Requests an origin answered 404 from a recent upstream 404 for the name, without asking the upstream again.",
                &["kind"],
            )?,
            store_bytes: gauge(r, "dcdn_store_bytes", "Bytes held in the chunk store.")?,
            store_chunks: gauge(r, "dcdn_store_chunks", "Chunks held in the chunk store.")?,
            store_evictions: counter1(
                r,
                "dcdn_store_evictions_total",
                "Chunks evicted to stay within the store budget.",
            )?,
            store_expirations: counter1(
                r,
                "dcdn_store_expirations_total",
                "Chunks removed because their TTL passed.",
            )?,
            store_hits: counter1(
                r,
                "dcdn_store_hits_total",
                "Store lookups that found the chunk.",
            )?,
            store_misses: counter1(
                r,
                "dcdn_store_misses_total",
                "Store lookups that did not find the chunk.",
            )?,
            peers: gauge_vec(
                r,
                "dcdn_peers",
                "Connected peers by choke state (choked, unchoked); banned: bans in force, connected or not.",
                &["state"],
            )?,
            quic_rtt_seconds: {
                let g = prometheus::GaugeVec::new(
                    Opts::new(
                        "dcdn_quic_rtt_seconds",
                        "Smoothed QUIC round-trip time, mean over peers of a class.",
                    ),
                    &["peer_class"],
                )
                .map_err(|source| MetricsError::Register {
                    name: "dcdn_quic_rtt_seconds",
                    source,
                })?;
                register(r, "dcdn_quic_rtt_seconds", g)?
            },
            quic_lost_packets: counter(
                r,
                "dcdn_quic_lost_packets_total",
                "QUIC packets lost, by peer class.",
                &["peer_class"],
            )?,
            quic_black_holes: counter(
                r,
                "dcdn_quic_black_holes_total",
                "MTU black holes detected by QUIC (each resets the path MTU to its minimum), by peer class.",
                &["peer_class"],
            )?,
            handshakes_refused: counter(
                r,
                "dcdn_handshakes_refused_total",
                "Mesh connections refused during the handshake, by reason.",
                &["reason"],
            )?,
            banned_refused: counter(
                r,
                "dcdn_banned_refused_total",
                "Input from banned peers refused, by path (handshake, hello, datagram, control, request).",
                &["path"],
            )?,
            auth_refused: counter(
                r,
                "dcdn_auth_refused_total",
                "Requests refused for their credentials, by api (admin, ingest) and reason (no_token, malformed_authorization, bad_token, forbidden).",
                &["api", "reason"],
            )?,
            http_requests: counter(
                r,
                "dcdn_http_requests_total",
                "HTTP requests by route and status.",
                &["route", "status"],
            )?,
            http_refused: counter(
                r,
                "dcdn_http_refused_total",
                "HTTP connections refused or cut, by listener (http, http3, admin) and reason (per_ip_limit, header_timeout, idle_timeout, tls_handshake, tls_handshake_timeout).",
                &["listener", "reason"],
            )?,
            http_duration: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "dcdn_http_request_duration_seconds",
                        "HTTP request latency by route.",
                    )
                    .buckets(
                        prometheus::exponential_buckets(0.0001, 4.0, 10).map_err(|source| {
                            MetricsError::Register {
                                name: "dcdn_http_request_duration_seconds",
                                source,
                            }
                        })?,
                    ),
                    &["route"],
                )
                .map_err(|source| MetricsError::Register {
                    name: "dcdn_http_request_duration_seconds",
                    source,
                })?;
                register(r, "dcdn_http_request_duration_seconds", h)?
            },
            origin_offload_ratio: {
                let g = prometheus::Gauge::new(
                    "dcdn_origin_offload_ratio",
                    "Bytes the origin sent to the mesh divided by bytes it ingested.",
                )
                .map_err(|source| MetricsError::Register {
                    name: "dcdn_origin_offload_ratio",
                    source,
                })?;
                register(r, "dcdn_origin_offload_ratio", g)?
            },
            keyring_generation: gauge(
                r,
                "dcdn_keyring_generation",
                "Generation of the key ring; bumps on every key change.",
            )?,
            frames_malformed: counter(
                r,
                "dcdn_frames_malformed_total",
                "Peer frames that failed to decode, by error kind.",
                &["kind"],
            )?,
            trust_bundle_reloads: counter(
                r,
                "dcdn_trust_bundle_reloads_total",
                "Trust-bundle reloads by result (ok, failed).",
                &["result"],
            )?,
            tls_reloads: counter(
                r,
                "dcdn_tls_reloads_total",
                "HTTPS certificate reloads after their files changed, by result (ok, failed: old certificates kept).",
                &["result"],
            )?,
            tls_cert_expiry: gauge(
                r,
                "dcdn_tls_cert_expiry_timestamp_seconds",
                "Earliest notAfter of the HTTPS certificates in use, Unix seconds (0 without http_tls).",
            )?,
            build_info: {
                let g = gauge_vec(
                    r,
                    "dcdn_build_info",
                    "Always 1; the labels say which build this node runs.",
                    &["version", "commit"],
                )?;
                g.with_label_values(&[env!("CARGO_PKG_VERSION"), crate::COMMIT])
                    .set(1);
                g
            },
            live_files: counter(
                r,
                "dcdn_live_files_total",
                "Live file versions taken into the window, by stream and kind (playlist, mpd, segment).",
                &["stream", "kind"],
            )?,
            live_served: counter(
                r,
                "dcdn_live_served_total",
                "Live files served to players, by stream and kind.",
                &["stream", "kind"],
            )?,
            live_refused: counter(
                r,
                "dcdn_live_refused_total",
                "Live publishes or files refused, by reason.",
                &["reason"],
            )?,
            live_expired: counter1(
                r,
                "dcdn_live_expired_segments_total",
                "Live segments dropped because they left the DVR window.",
            )?,
            live_held_bytes: gauge_vec(
                r,
                "dcdn_live_held_bytes",
                "Bytes of live files this node holds, by stream.",
                &["stream"],
            )?,
            live_segment_delay: {
                let h = prometheus::Histogram::with_opts(
                    HistogramOpts::new(
                        "dcdn_live_segment_delay_seconds",
                        "From the origin signing a live segment's manifest to this node taking it in.",
                    )
                    .buckets(vec![
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    ]),
                )
                .map_err(|source| MetricsError::Register {
                    name: "dcdn_live_segment_delay_seconds",
                    source,
                })?;
                register(r, "dcdn_live_segment_delay_seconds", h)?
            },
            live_held: gauge_vec(
                r,
                "dcdn_live_held_requests",
                "LL-HLS requests held now (blocking reloads, preload-hinted parts), by stream.",
                &["stream"],
            )?,
            live_blocking: counter(
                r,
                "dcdn_live_blocking_total",
                "LL-HLS requests that waited, by stream, kind (reload, hint) and result (released, timed_out).",
                &["stream", "kind", "result"],
            )?,
            registry,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .map_err(MetricsError::Encode)?;
        String::from_utf8(out).map_err(|e| {
            MetricsError::Encode(prometheus::Error::Msg(format!("non-UTF-8 exposition: {e}")))
        })
    }

    /// The registry, for parts that register collectors of their own.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    name: &'static str,
    collector: C,
) -> Result<C, MetricsError> {
    registry
        .register(Box::new(collector.clone()))
        .map_err(|source| MetricsError::Register { name, source })?;
    Ok(collector)
}

fn counter(
    registry: &Registry,
    name: &'static str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, MetricsError> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .map_err(|source| MetricsError::Register { name, source })?;
    register(registry, name, c)
}

fn gauge_vec(
    registry: &Registry,
    name: &'static str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, MetricsError> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .map_err(|source| MetricsError::Register { name, source })?;
    register(registry, name, g)
}

fn counter1(
    registry: &Registry,
    name: &'static str,
    help: &str,
) -> Result<IntCounter, MetricsError> {
    let c =
        IntCounter::new(name, help).map_err(|source| MetricsError::Register { name, source })?;
    register(registry, name, c)
}

fn gauge(registry: &Registry, name: &'static str, help: &str) -> Result<IntGauge, MetricsError> {
    let g = IntGauge::new(name, help).map_err(|source| MetricsError::Register { name, source })?;
    register(registry, name, g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_renders_with_help_and_role_label() {
        let m = Metrics::new("edge").unwrap();
        m.chunks.with_label_values(&["in", "push"]).inc_by(3);
        m.chunks_rejected.with_label_values(&["signature"]).inc();
        m.keyring_generation.set(7);
        let text = m.render().unwrap();
        assert!(text.contains("# HELP dcdn_chunks_total Chunks moved"));
        assert!(text.contains(r#"dcdn_chunks_total{direction="in",path="push",role="edge"} 3"#));
        assert!(text.contains(r#"dcdn_chunks_rejected_total{reason="signature",role="edge"} 1"#));
        assert!(text.contains(r#"dcdn_keyring_generation{role="edge"} 7"#));
        let build = format!(
            r#"dcdn_build_info{{commit="{}",version="{}",role="edge"}} 1"#,
            crate::COMMIT,
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&build), "{text}");
        #[cfg(target_os = "linux")]
        assert!(text.contains("process_resident_memory_bytes{role=\"edge\"}"));
    }

    /// Prometheus naming: every counter ends in `_total`, nothing else does,
    /// and no label names a peer (one series per peer ever seen).
    #[test]
    fn counters_end_in_total_and_labels_are_bounded() {
        let m = Metrics::new("edge").unwrap();
        m.quic_lost_packets.with_label_values(&["relay"]).inc();
        m.fec_parity.with_label_values(&["relay"]).set(2);
        for family in m.registry.gather() {
            let name = family.name();
            let counter = family.get_field_type() == prometheus::proto::MetricType::COUNTER;
            assert_eq!(
                counter,
                name.ends_with("_total"),
                "{name}: counters and only counters end in _total"
            );
            for metric in family.get_metric() {
                for label in metric.get_label() {
                    assert!(
                        !["peer", "peer_id", "address"].contains(&label.name()),
                        "{name} has an unbounded label {}",
                        label.name()
                    );
                }
            }
        }
    }

    #[test]
    fn two_nodes_in_one_process_have_separate_registries() {
        let a = Metrics::new("relay").unwrap();
        let b = Metrics::new("edge").unwrap();
        a.keyring_generation.set(1);
        b.keyring_generation.set(2);
        assert!(
            a.render()
                .unwrap()
                .contains(r#"dcdn_keyring_generation{role="relay"} 1"#)
        );
        assert!(
            b.render()
                .unwrap()
                .contains(r#"dcdn_keyring_generation{role="edge"} 2"#)
        );
    }

    /// Every `dcdn_*` name a dashboard queries is defined in `source`
    /// (histogram suffixes aside), and counters are only read through
    /// `rate`/`increase`: a raw counter graph is a line that only climbs.
    fn check_dashboard(dashboard: &str, source: &str) -> usize {
        let json: serde_json::Value = serde_json::from_str(dashboard).unwrap();
        assert!(json["panels"].as_array().unwrap().len() > 5);
        let mut checked = 0;
        for (at, _) in dashboard.match_indices("dcdn_") {
            let name: String = dashboard[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(
                source.contains(&format!("\"{base}\"")),
                "the dashboard queries {name}, which is not exported"
            );
            if name.ends_with("_total") || name.ends_with("_bucket") {
                let expr_start = dashboard[..at].rfind("\"expr\"").unwrap();
                let before = &dashboard[expr_start..at];
                assert!(
                    before.contains("rate(") || before.contains("increase("),
                    "counter {name} is graphed without rate()"
                );
            }
            checked += 1;
        }
        checked
    }

    #[test]
    fn the_dashboards_query_only_metrics_that_exist() {
        let nodes = include_str!("../../deploy/grafana/dcdn.json");
        assert!(check_dashboard(nodes, include_str!("metrics.rs")) > 20);
        let operator = include_str!("../../deploy/grafana/dcdn-operator.json");
        let operator_source = include_str!("../../operator/src/metrics.rs");
        assert!(check_dashboard(operator, operator_source) > 5);
    }

    /// The chart ships the same dashboards as `deploy/grafana/` (Helm reads
    /// files only from inside the chart, so they are copies).
    #[test]
    fn the_chart_ships_the_dashboards_of_deploy_grafana() {
        assert_eq!(
            include_str!("../../deploy/grafana/dcdn.json"),
            include_str!("../../helm/dcdn/dashboards/dcdn.json"),
            "cp deploy/grafana/dcdn.json helm/dcdn/dashboards/"
        );
        assert_eq!(
            include_str!("../../deploy/grafana/dcdn-operator.json"),
            include_str!("../../helm/dcdn/dashboards/dcdn-operator.json"),
            "cp deploy/grafana/dcdn-operator.json helm/dcdn/dashboards/"
        );
    }
}
