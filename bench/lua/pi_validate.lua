-- privacyIDEA: POST /validate/check serial=BENCH_PI_SERIAL pass=000000 (a wrong code):
-- 200 with result.value false is expected.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = "serial=" .. os.getenv("BENCH_PI_SERIAL") .. "&pass=000000"
