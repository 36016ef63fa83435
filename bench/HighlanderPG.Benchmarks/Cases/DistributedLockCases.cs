using System.Diagnostics;
using System.Globalization;
using HighlanderPG.Benchmarks.Infrastructure;
using HighlanderPG.Benchmarks.Measurement;
using Medallion.Threading.Postgres;

namespace HighlanderPG.Benchmarks.Cases;

/// <summary>
/// DistributedLock.Postgres 1.3.1 with its defaults (connection multiplexing on, keepalive off): a waiter in a
/// waiting <see cref="PostgresDistributedLock.AcquireAsync"/>. "Watched" means the holder watches
/// <c>HandleLostToken</c>, as code that must stop when it loses the lock does; that starts DistributedLock's connection
/// monitor on the holder's connection.
/// </summary>
internal static class DistributedLockCases
{
    public const string System = "DistributedLock.Postgres 1.3.1";
    private const string HolderApplicationName = "bench-dl-holder";
    private const string WaiterApplicationName = "bench-dl-waiter";

    /// <summary>DistributedLock's monitor runs <c>pg_sleep</c> in one-minute slices (ConnectionMonitor.DoMonitoringAsync).</summary>
    private static readonly TimeSpan MonitorCadence = TimeSpan.FromMinutes(1);

    public static BenchCase Graceful(BenchContext context, bool watched)
    {
        var result = new CaseResult(watched ? "dl-graceful" : "dl-graceful-unwatched", System + (watched ? ", `HandleLostToken` watched" : ""), "graceful",
            "Holder (same process, its own connection pool) disposes its handle" + (watched ? " while watching `HandleLostToken`" : " (not watching `HandleLostToken`)") +
            "; timed from just before `DisposeAsync()` to the waiter's `AcquireAsync()` returning.");
        var key = context.NewKey();
        var holderLock = new PostgresDistributedLock(new PostgresAdvisoryLockKey(key), context.AsGiven(HolderApplicationName));
        var waiterLock = new PostgresDistributedLock(new PostgresAdvisoryLockKey(key), context.AsGiven(WaiterApplicationName));
        var monitorSeen = 0;
        var runs = 0;
        var queries = new HashSet<string>(StringComparer.Ordinal);
        return new BenchCase(result, context.Settings.Iterations, async (_, ct) =>
        {
            var handle = await holderLock.AcquireAsync(cancellationToken: ct);
            try
            {
                if (watched)
                {
                    handle.HandleLostToken.Register(() => { });
                    runs++;
                    if (await WaitForMonitorAsync(context, null, ct) is { } query)
                    {
                        monitorSeen++;
                        queries.Add(query);
                    }
                }

                var wait = AcquireStampedAsync(waiterLock, ct);
                await context.Probe.WaitForWaiterAsync(key, LockProbe.Exclusive, BenchContext.SetupTimeout, ct);

                var start = Stopwatch.GetTimestamp();
                await handle.DisposeAsync();
                var released = Stopwatch.GetTimestamp();
                var (end, acquired) = await wait.WaitAsync(context.Settings.Cap, ct);
                await acquired.DisposeAsync();
                return new Measured(Sample.Between(start, end), [("holder's `DisposeAsync()` returned", Sample.ToMilliseconds(released - start))]);
            }
            finally
            {
                await handle.DisposeAsync();
            }
        })
        {
            Conclude = () =>
            {
                if (watched)
                {
                    result.Note(MonitorNote("release", monitorSeen, runs, queries));
                }
            },
        };
    }

    public static BenchCase Crash(BenchContext context, bool watched)
    {
        var iterations = watched ? context.Settings.SlowIterations : context.Settings.Iterations;
        var result = new CaseResult(watched ? "dl-crash" : "dl-crash-unwatched", System + (watched ? ", `HandleLostToken` watched" : ""), "crash",
            "Holder process (`AcquireAsync()`, then " + (watched ? "watching `HandleLostToken`" : "idle, not watching `HandleLostToken`") +
            ") is SIGKILLed" + (watched ? " at a random moment of its monitor's first one-minute `pg_sleep` slice (uniform dwell in [0, 60 s) after the slice is seen to start)" : "") +
            "; timed from just before `Process.Kill()` to the waiter's `AcquireAsync()` returning, given up after the cap.");
        var queries = new HashSet<string>(StringComparer.Ordinal);
        var monitorSeen = 0;
        var runs = 0;
        if (watched)
        {
            result.Settings = "defaults; the iterations run at the same time, each with its own key, holder process and waiter (they last up to a minute; milliseconds of contention do not show).";
        }

        return new BenchCase(result, iterations, async (_, ct) =>
        {
            // A new key each time: after a wait given up at the cap, the dead holder's backend may still hold the old one.
            var key = context.NewKey();
            var waiterLock = new PostgresDistributedLock(new PostgresAdvisoryLockKey(key), context.AsGiven(WaiterApplicationName));
            List<string> arguments = ["--kind", "distributedlock", "--key", key.ToString(CultureInfo.InvariantCulture)];
            if (watched)
            {
                arguments.Add("--watch-lost");
            }

            await using var node = NodeProcess.Start(context.ConnectionString, arguments);
            await node.WaitReadyAsync(BenchContext.SetupTimeout, ct);
            var dwell = TimeSpan.Zero;
            if (watched)
            {
                Interlocked.Increment(ref runs);
                if (await WaitForMonitorAsync(context, node.Pid, ct) is { } query)
                {
                    Interlocked.Increment(ref monitorSeen);
                    lock (queries)
                    {
                        queries.Add(query);
                    }
                }

                // The monitor sleeps in one-minute slices and the server only sees the dead client when a slice ends:
                // kill at a random phase of the first slice, as a crash at a random moment would.
                dwell = context.Dwell(MonitorCadence);
            }

            using var capped = CancellationTokenSource.CreateLinkedTokenSource(ct);
            var wait = AcquireStampedAsync(waiterLock, capped.Token);
            await context.Probe.WaitForWaiterAsync(key, LockProbe.Exclusive, BenchContext.SetupTimeout, ct);
            await Task.Delay(dwell, ct);

            var start = Stopwatch.GetTimestamp();
            node.Kill();
            capped.CancelAfter(context.Settings.Cap);
            try
            {
                var (end, acquired) = await wait;
                await acquired.DisposeAsync();
                return new Measured(Sample.Between(start, end));
            }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested)
            {
                return new Measured(Sample.Beyond(context.Settings.Cap));
            }
        })
        {
            // A watched iteration lasts up to a minute: no warm-up (JIT warm-up is noise at that scale), and all at once.
            WarmUp = !watched,
            Concurrent = watched,
            Conclude = () =>
            {
                if (watched)
                {
                    result.Note(MonitorNote("kill", monitorSeen, runs, queries));
                }
            },
        };
    }

    private static string MonitorNote(string fault, int seen, int runs, IReadOnlyCollection<string> queries) =>
        $"The holder's session was seen running a query (DistributedLock's connection monitor) before the {fault} in {seen} of {runs} iterations" +
        (queries.Count > 0 ? $": `{string.Join("`, `", queries)}`." : ".");

    private static async Task<(long At, PostgresDistributedLockHandle Handle)> AcquireStampedAsync(PostgresDistributedLock distributedLock, CancellationToken cancellationToken)
    {
        var handle = await distributedLock.AcquireAsync(cancellationToken: cancellationToken);
        return (Stopwatch.GetTimestamp(), handle);
    }

    /// <summary>The application name of a holder: in a node process, tagged with its process id.</summary>
    public static string HolderName(int? processId) => processId is { } pid ? $"{HolderApplicationName}-{pid}" : HolderApplicationName;

    /// <summary>Waits (up to 5 s) until the holder's session runs a query: DistributedLock's connection monitor. Returns it.</summary>
    private static async Task<string?> WaitForMonitorAsync(BenchContext context, int? holderProcessId, CancellationToken cancellationToken)
    {
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(5);
        while (DateTime.UtcNow < until)
        {
            var active = (await context.Probe.ActivityAsync(HolderName(holderProcessId), cancellationToken)).FirstOrDefault(a => a.State == "active");
            if (active.State is not null)
            {
                return (active.Query ?? string.Empty).ReplaceLineEndings(" ").Trim();
            }

            await Task.Delay(10, cancellationToken);
        }

        return null;
    }
}
