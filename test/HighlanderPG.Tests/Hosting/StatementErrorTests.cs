using HighlanderPG.Diagnostics;
using HighlanderPG.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Npgsql;

namespace HighlanderPG.Tests.Hosting;

/// <summary>
/// A statement of the lock session fails while its connection still works (what <c>pg_cancel_backend</c>, a role's
/// <c>statement_timeout</c> or <c>out of shared memory</c> do): the node gives the session up, but its backend keeps the
/// locks until the children are gone (docs/lease-protocol.md, "Faults and what each does").
/// </summary>
[Collection(SharedServer.Name)]
public sealed class StatementErrorTests(PostgresFixture pg)
{
    /// <summary>How long the test's child takes to stop once told to: well within <see cref="SlowTimings"/>' stop timeout.</summary>
    private static readonly TimeSpan StopDuration = TimeSpan.FromSeconds(1.5);

    /// <summary>The test timings, with a stop timeout that leaves the slow child room (2 × 0.5 s + 3 s + 0.5 s ≤ 6 s).</summary>
    private static void SlowTimings(HighlanderOptions o)
    {
        o.LeaseDuration = TimeSpan.FromSeconds(6);
        o.StopTimeout = TimeSpan.FromSeconds(3);
        o.LockDelayAfterServerStart = o.LeaseDuration;
    }

    [Fact]
    public async Task A_failed_statement_on_a_working_session_keeps_the_locks_until_the_children_have_stopped()
    {
        // The lock session's heartbeat runs an unqualified pg_backend_pid(). A node whose search_path puts a schema of the
        // test's before pg_catalog calls the test's pg_backend_pid() instead, which fails for the backends listed in a
        // table: so the test makes a statement fail on one chosen session while its connection keeps working.
        var schema = "stmt_" + Guid.NewGuid().ToString("N")[..10];
        await Db.ScalarAsync<object>(pg.ConnectionString, $"""
            CREATE SCHEMA {schema};
            CREATE TABLE {schema}.fail (pid int PRIMARY KEY);
            CREATE FUNCTION {schema}.pg_backend_pid() RETURNS int LANGUAGE plpgsql AS $f$
            BEGIN
                IF EXISTS (SELECT 1 FROM {schema}.fail WHERE pid = pg_catalog.pg_backend_pid()) THEN
                    RAISE EXCEPTION 'statement failed (injected by the test)';
                END IF;
                RETURN pg_catalog.pg_backend_pid();
            END
            $f$;
            """);
        try
        {
            await using var cluster = new TestCluster(pg.ConnectionString);
            var shadowed = new NpgsqlConnectionStringBuilder(pg.ConnectionString) { SearchPath = $"{schema},pg_catalog" }.ConnectionString;
            var a = await cluster.StartNodeAsync("a", singletons: [], configure: SlowTimings, services: SlowChild("job", "solo"), connectionString: shadowed);
            await a.WaitForStateAsync("job", SingletonState.Leading);
            await a.WaitForStateAsync("solo", SingletonState.Leading);
            var b = await cluster.StartNodeAsync("b", singletons: [], configure: SlowTimings, services: SlowChild("job"));
            await b.WaitForLeaderAsync("job", "a");

            var pid = await Db.HolderPidAsync(pg.ConnectionString, SingletonKey.Derive(cluster.Namespace, "job"));
            Assert.NotNull(pid);
            Assert.Equal(pid, await Db.HolderPidAsync(pg.ConnectionString, SingletonKey.Derive(cluster.Namespace, "solo")));
            var mark = cluster.Recorder.Mark();
            var fault = System.Diagnostics.Stopwatch.GetTimestamp();
            await Db.ScalarAsync<object>(pg.ConnectionString, $"INSERT INTO {schema}.fail (pid) VALUES ($1)", pid.Value);

            // The node gives the session up because of the failed statement (not at its lease deadline, not the server's doing).
            var cause = await cluster.Logs.WaitAsync(e => e.Node == "a" && e.Timestamp > fault && e.EventId.Id is HighlanderEventIds.SessionLost or HighlanderEventIds.LeaseExpiring);
            Assert.Equal(HighlanderEventIds.SessionLost, cause.EventId.Id);
            Assert.Contains("injected by the test", cause.Message);

            // The old child stops (taking its time), and only then does the singleton start again, on either node: the old
            // backend kept the lock until then.
            var stopped = await cluster.Recorder.WaitStoppedAsync("job", "a", mark);
            var next = await cluster.Recorder.WaitStartedAsync("job", mark);
            Assert.True(stopped.Seq < next.Seq, cluster.Recorder.Describe());

            // The node reconnected with a new backend, which found its keys held by the old one, and took them once it
            // ended: the singleton nobody else runs starts again here, after its old child stopped.
            var soloStopped = await cluster.Recorder.WaitStoppedAsync("solo", "a", mark);
            var soloAgain = await cluster.Recorder.WaitStartedAsync("solo", mark, node: "a");
            Assert.True(soloStopped.Seq < soloAgain.Seq, cluster.Recorder.Describe());
            await a.WaitForStateAsync("solo", SingletonState.Leading);
            var newPid = await Db.HolderPidAsync(pg.ConnectionString, SingletonKey.Derive(cluster.Namespace, "solo"));
            Assert.NotNull(newPid);
            Assert.NotEqual(pid, newPid);

            // And it contends for the shared one again: it leads it, or follows the node that does.
            var status = await a.WaitForAsync("job", s => s.State == SingletonState.Leading || (s.State == SingletonState.Following && s.Leader?.NodeId == next.Node), "contend again");
            Assert.Equal(next.Node == "a" ? SingletonState.Leading : SingletonState.Following, status.State);
            if (next.Node == "a")
            {
                await b.WaitForLeaderAsync("job", "a");
            }

            cluster.Recorder.AssertNoOverlap();
        }
        finally
        {
            await Db.ScalarAsync<object>(pg.ConnectionString, $"DROP SCHEMA {schema} CASCADE");
        }
    }

    private static Action<IServiceCollection> SlowChild(params string[] names) => services =>
    {
        foreach (var name in names)
        {
            services.AddClusterSingleton<SlowToStopService>(name);
        }
    };

    /// <summary>A child that records its life and takes <see cref="StopDuration"/> to stop once told to (it flushes, say).</summary>
    private sealed class SlowToStopService(LifeJournal journal, ILeadership leadership) : BackgroundService
    {
        protected override async Task ExecuteAsync(CancellationToken stoppingToken)
        {
            journal.Record(leadership.NodeId, leadership.Name, LifeKind.Started);
            try
            {
                await Task.Delay(Timeout.Infinite, stoppingToken);
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
            }

            // Its behaviour, not a synchronisation: a child still busy for a while after it was told to stop.
            await Task.Delay(StopDuration, CancellationToken.None);
            journal.Record(leadership.NodeId, leadership.Name, LifeKind.Stopped);
        }
    }
}
