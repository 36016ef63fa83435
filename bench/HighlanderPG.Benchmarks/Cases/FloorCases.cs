using System.Diagnostics;
using System.Globalization;
using HighlanderPG.Benchmarks.Infrastructure;
using HighlanderPG.Benchmarks.Measurement;
using Npgsql;

namespace HighlanderPG.Benchmarks.Cases;

/// <summary>
/// The floor: a waiter blocked in <c>SELECT pg_advisory_lock(k)</c> on its own connection. Nothing can hand over
/// faster than PostgreSQL wakes a blocked lock request and the reply reaches the waiter.
/// </summary>
internal static class FloorCases
{
    public const string System = "floor (raw `pg_advisory_lock`)";

    public static BenchCase Graceful(BenchContext context)
    {
        var result = new CaseResult("floor-graceful", System, "graceful",
            "Holder (own connection, same process) runs `SELECT pg_advisory_unlock(k)`; timed from just before that call to the waiter's blocked `SELECT pg_advisory_lock(k)` returning.");
        NpgsqlConnection? holder = null, waiter = null;
        var key = context.NewKey();
        return new BenchCase(result, context.Settings.Iterations, async (_, ct) =>
        {
            await ExecuteAsync(holder!, "SELECT pg_advisory_lock($1)", key, ct);
            var wait = BlockingLockAsync(waiter!, key, ct);
            await context.Probe.WaitForWaiterAsync(key, LockProbe.Exclusive, BenchContext.SetupTimeout, ct);

            var start = Stopwatch.GetTimestamp();
            await ExecuteAsync(holder!, "SELECT pg_advisory_unlock($1)", key, ct);
            var released = Stopwatch.GetTimestamp();
            var end = await wait.WaitAsync(context.Settings.Cap, ct);

            await ExecuteAsync(waiter!, "SELECT pg_advisory_unlock($1)", key, ct);
            return new Measured(Sample.Between(start, end), [("holder's unlock returned", Sample.ToMilliseconds(released - start))]);
        })
        {
            SetUp = async ct =>
            {
                holder = await context.OpenDedicatedAsync("bench-floor-holder", ct);
                waiter = await context.OpenDedicatedAsync("bench-floor-waiter", ct);
            },
            TearDown = async () =>
            {
                await DisposeAsync(holder);
                await DisposeAsync(waiter);
            },
        };
    }

    public static BenchCase Crash(BenchContext context)
    {
        var result = new CaseResult("floor-crash", System, "crash",
            "Holder process (`pg_advisory_lock(k)` on its own connection, then idle) is SIGKILLed; timed from just before `Process.Kill()` to the waiter's blocked `SELECT pg_advisory_lock(k)` returning.");
        NpgsqlConnection? waiter = null;
        return new BenchCase(result, context.Settings.Iterations, async (_, ct) =>
        {
            var key = context.NewKey();
            await using var node = NodeProcess.Start(context.ConnectionString, ["--kind", "raw", "--key", key.ToString(CultureInfo.InvariantCulture)]);
            await node.WaitReadyAsync(BenchContext.SetupTimeout, ct);
            var wait = BlockingLockAsync(waiter!, key, ct);
            await context.Probe.WaitForWaiterAsync(key, LockProbe.Exclusive, BenchContext.SetupTimeout, ct);

            var start = Stopwatch.GetTimestamp();
            node.Kill();
            var end = await wait.WaitAsync(context.Settings.Cap, ct);

            await ExecuteAsync(waiter!, "SELECT pg_advisory_unlock($1)", key, ct);
            return new Measured(Sample.Between(start, end));
        })
        {
            SetUp = async ct => waiter = await context.OpenDedicatedAsync("bench-floor-waiter", ct),
            TearDown = async () => await DisposeAsync(waiter),
        };
    }

    /// <summary>Sends the blocking lock request now; the task ends with the timestamp at which it returned.</summary>
    private static async Task<long> BlockingLockAsync(NpgsqlConnection connection, long key, CancellationToken cancellationToken)
    {
        await ExecuteAsync(connection, "SELECT pg_advisory_lock($1)", key, cancellationToken);
        return Stopwatch.GetTimestamp();
    }

    private static async Task ExecuteAsync(NpgsqlConnection connection, string sql, long key, CancellationToken cancellationToken)
    {
        await using var cmd = new NpgsqlCommand(sql, connection);
        cmd.Parameters.Add(new NpgsqlParameter<long> { TypedValue = key });
        await cmd.ExecuteNonQueryAsync(cancellationToken);
    }

    private static async ValueTask DisposeAsync(NpgsqlConnection? connection)
    {
        if (connection is not null)
        {
            await connection.DisposeAsync();
        }
    }
}
