// Hand-over latency benchmark for HighlanderPG, against the floor (a raw blocking pg_advisory_lock) and
// DistributedLock.Postgres. See bench/README.md. The hidden "node" verb is the holder process that the benchmark
// launches (this same executable) and SIGKILLs.
using HighlanderPG.Benchmarks;
using HighlanderPG.Benchmarks.Infrastructure;

return args.Length > 0 && args[0] == NodeMode.Verb
    ? await NodeMode.RunAsync(args[1..])
    : await BenchmarkRunner.RunAsync(args);
