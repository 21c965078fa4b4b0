-- bench/server_bench.lua — wrk script for bench/server_bench.sh.
-- The Authorization header is given on wrk's command line (-H); this script only prints, at
-- the end, one machine-readable line with the exact percentiles (microseconds) and error
-- counts, which server_bench.py parses. No per-request hook: wrk's threads share the two
-- cores with the server, and a Lua call per response would cost CPU the server needs.
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        "WRKRESULT requests=%d duration_us=%d bytes=%d mean_us=%.1f p50_us=%d p75_us=%d p90_us=%d p99_us=%d max_us=%d " ..
        "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
        summary.requests, summary.duration, summary.bytes, latency.mean,
        latency:percentile(50), latency:percentile(75), latency:percentile(90),
        latency:percentile(99), latency.max,
        e.connect, e.read, e.write, e.status, e.timeout))
end
