use super::*;

#[test]
fn transaction_outcomes_and_reasons() {
    let m = Metrics::new(LatencyHistogram::default());
    m.smtp_session();
    m.upstream_reply("rcpt", 250);
    m.transaction("tracked", 250, 100, Duration::from_millis(3));
    m.transaction("no_html", 451, 100, Duration::from_millis(3));
    let snap = Snapshot {
        verdicts: vec![("machine", "apple-mpp".into(), 4)],
        clicks: vec![("person".into(), 3), ("link-burst".into(), 2)],
        webhooks: Some(WebhookCounts {
            delivered: 7,
            ..WebhookCounts::default()
        }),
        ..Snapshot::default()
    };
    let text = m.render(&snap);
    for want in [
        "pixelrelay_smtp_sessions_total 1",
        "pixelrelay_upstream_replies_total{stage=\"rcpt\",class=\"2xx\"} 1",
        "pixelrelay_smtp_transactions_total{outcome=\"accepted\"} 1",
        "pixelrelay_smtp_transactions_total{outcome=\"tempfail\"} 1",
        "pixelrelay_rewrite_decisions_total{decision=\"skipped\",reason=\"no_html\"} 1",
        "pixelrelay_relayed_bytes_total 100",
        "pixelrelay_relay_duration_seconds_count 2",
        "pixelrelay_pixel_requests_total{result=\"valid\"} 0",
        "pixelrelay_open_verdicts_total{kind=\"machine\",reason=\"apple-mpp\"} 4",
        "pixelrelay_webhook_events_total{result=\"delivered\"} 7",
        "pixelrelay_clicks_total{machine=\"false\"} 3",
        "pixelrelay_clicks_total{machine=\"true\",reason=\"link-burst\"} 2",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

#[test]
fn latency_buckets_bounds_and_shards_sum() {
    assert_eq!(bucket_of(0), 0);
    assert_eq!(bucket_of(500_000), 0, "0.5 ms is in le=0.0005");
    assert_eq!(bucket_of(500_001), 1);
    assert_eq!(bucket_of(1_000_000), 1);
    assert_eq!(bucket_of(1_000_001), 2);
    assert_eq!(bucket_of(FIRST_BUCKET_NS << (BUCKETS - 1)), BUCKETS - 1);
    assert_eq!(bucket_of((FIRST_BUCKET_NS << (BUCKETS - 1)) + 1), BUCKETS);
    assert_eq!(bucket_of(u64::MAX), BUCKETS);

    let h = LatencyHistogram::default();
    // Observed from threads of their own, so from several shards.
    let threads: Vec<_> = [300_000u64, 700_000, 3_000_000, 200_000_000_000]
        .into_iter()
        .map(|ns| {
            let h = h.clone();
            std::thread::spawn(move || h.observe(Duration::from_nanos(ns)))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    h.observe(Duration::from_micros(300));
    let mut registry = Registry::default();
    registry.register_with_unit("d", "t", Unit::Seconds, h);
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    for want in [
        "d_seconds_bucket{le=\"0.0005\"} 2\n",
        "d_seconds_bucket{le=\"0.001\"} 3\n",
        "d_seconds_bucket{le=\"0.002\"} 3\n",
        "d_seconds_bucket{le=\"0.004\"} 4\n",
        "d_seconds_bucket{le=\"65.536\"} 4\n",
        "d_seconds_bucket{le=\"+Inf\"} 5\n",
        "d_seconds_count 5\n",
        "d_seconds_sum 200.0043\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}
