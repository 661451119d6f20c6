# Reads perfdhcp output (run with -x t) and prints one line:
#   sent_do recv_do sent_ra recv_ra p50_ms p99_ms p99_do_ms p99_ra_ms max_ms n_samples
# Delays are reply time minus request time of every successful
# request/reply pair (DISCOVER->OFFER and REQUEST->ACK pooled), in ms.
function pct(arr, n, p,   i) {
    if (n == 0) return "";
    i = int(p * n + 0.999999); if (i < 1) i = 1; if (i > n) i = n;
    return arr[i];
}
function isort(a, n,   i, j, t) { # shell sort, numeric
    for (gap = int(n / 2); gap > 0; gap = int(gap / 2))
        for (i = gap + 1; i <= n; i++) {
            t = a[i];
            for (j = i; j > gap && a[j - gap] > t; j -= gap) a[j] = a[j - gap];
            a[j] = t;
        }
}
/^\*\*\*Statistics for: DISCOVER-OFFER/ { sec = "do"; next }
/^\*\*\*Statistics for: REQUEST-ACK/ { sec = "ra"; next }
/^\*\*\*Timestamps for packets: DISCOVER-OFFER/ { sec = "tdo"; next }
/^\*\*\*Timestamps for packets: REQUEST-ACK/ { sec = "tra"; next }
/^\*\*\*/ { sec = ""; next }
/^sent packets:/ { sent[sec] = $3 }
/^received packets:/ { recv[sec] = $3 }
/^sent \/ received:/ {
    d = ($6 - $4) * 1000.0;
    all[++n] = d;
    if (sec == "tdo") dd[++ndo] = d; else if (sec == "tra") dr[++nra] = d;
}
END {
    isort(all, n); isort(dd, ndo); isort(dr, nra);
    printf "%d %d %d %d %s %s %s %s %s %d\n", sent["do"], recv["do"], sent["ra"], recv["ra"],
        pct(all, n, 0.50), pct(all, n, 0.99), pct(dd, ndo, 0.99), pct(dr, nra, 0.99), (n ? all[n] : ""), n;
}
