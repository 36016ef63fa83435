using HighlanderPG.Diagnostics;
using System.Diagnostics;
using HighlanderPG.Testing;
using HighlanderPG.Tests.Infrastructure;

namespace HighlanderPG.Tests.Hosting;

/// <summary>
/// Real faults against the shared server with in-process nodes: a killed backend, a reset connection, a child that will not
/// stop at shutdown. The scenarios every kind of node shares (a cut-off leader, with a child that stops or one that will
/// not, a graceful hand-over) are in InProcessNodeScenarios.
/// </summary>
[Collection(SharedServer.Name)]
public sealed class FaultTests(PostgresFixture pg)
{
    // A session the server ends by itself (pg_terminate_backend, or a reset it sees first) frees the lock at once, before
    // the leader can know: the one fault a lease cannot order (README, Safety: it needs fencing). So these tests do not
    // assert that the old child stopped before the new one started (under CPU load the follower often wins by a few
    // milliseconds); they assert what is guaranteed: the leader stops its child because its session ended (not at its
    // lease deadline), the singleton runs again under a strictly higher fencing epoch, and losing the session is no crash.
    private static Action<HighlanderOptions> Fenced(string schema) => o =>
    {
        o.Fencing = true;
        o.FencingSchema = schema;
    };

    private static string NewSchema() => "f_" + Guid.NewGuid().ToString("N")[..10];

    /// <summary>The first session loss (1003) or lease deadline (1006) logged by <paramref name="node"/> after <paramref name="since"/>.</summary>
    private static Task<LogCapture.LogEntry> LossAfterAsync(TestCluster cluster, string node, long since) =>
        cluster.Logs.WaitAsync(e => e.Node == node && e.Timestamp > since && e.EventId.Id is HighlanderEventIds.SessionLost or HighlanderEventIds.LeaseExpiring);

    [Fact]
    public async Task A_killed_leader_backend_stops_the_child_and_the_singleton_runs_again_under_a_higher_epoch()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var schema = NewSchema();
        var a = await cluster.StartNodeAsync("a", configure: Fenced(schema));
        var first = await a.WaitForStateAsync("job", SingletonState.Leading);
        var b = await cluster.StartNodeAsync("b", configure: Fenced(schema));
        await b.WaitForLeaderAsync("job", "a");

        var key = SingletonKey.Derive(cluster.Namespace, "job");
        var pid = await Db.HolderPidAsync(pg.ConnectionString, key);
        Assert.NotNull(pid);
        var mark = cluster.Recorder.Mark();
        var fault = Stopwatch.GetTimestamp();
        await Db.TerminateAsync(pg.ConnectionString, pid.Value);

        await cluster.Recorder.WaitStoppedAsync("job", "a", mark);
        var next = await cluster.Recorder.WaitStartedAsync("job", mark);
        var cause = await LossAfterAsync(cluster, "a", fault);
        Assert.Equal(HighlanderEventIds.SessionLost, cause.EventId.Id); // stopped because its session ended, not at its lease deadline (1006)
        Assert.Contains("57P01", cause.Message); // ended by the server: admin_shutdown
        var leading = await (next.Node == "a" ? a : b).WaitForStateAsync("job", SingletonState.Leading);
        Assert.True(leading.FencingEpoch > first.FencingEpoch, $"epoch {leading.FencingEpoch} after {first.FencingEpoch}");
        Assert.Equal(0, a.Singletons.Get("job")!.Restarts); // losing the session is not a crash
    }

    [Fact]
    public async Task A_reset_connection_stops_the_child_and_the_node_reconnects_and_contends_again()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        await using var proxy = ProxyTo(pg.ConnectionString);
        var schema = NewSchema();
        var leader = await cluster.StartNodeAsync("reset", connectionString: proxy.ConnectionString(pg.ConnectionString), configure: Fenced(schema));
        var first = await leader.WaitForStateAsync("job", SingletonState.Leading);
        var follower = await cluster.StartNodeAsync("other", configure: Fenced(schema));
        await follower.WaitForLeaderAsync("job", "reset");

        // Both sides of every proxied connection get a TCP reset: the node sees its session broken at once, the
        // server ends the backend and frees the lock.
        var mark = cluster.Recorder.Mark();
        var fault = Stopwatch.GetTimestamp();
        proxy.SetMode(ProxyMode.Reset);
        await cluster.Recorder.WaitStoppedAsync("job", "reset", mark);
        var next = await cluster.Recorder.WaitStartedAsync("job", mark);
        Assert.Equal(HighlanderEventIds.SessionLost, (await LossAfterAsync(cluster, "reset", fault)).EventId.Id); // its session broke, not its lease deadline (1006)
        Assert.Equal(0, leader.Singletons.Get("job")!.Restarts); // losing the session is not a crash

        // The proxy passes again: the reset node reconnects through it and is a contender once more, following
        // whoever leads now (or leading, if the lock came back to it), under a higher epoch.
        var status = await leader.WaitForAsync("job", s => s.State == SingletonState.Leading || (s.State == SingletonState.Following && s.Leader?.NodeId == next.Node), "reconnect and contend again");
        Assert.True(status.State == SingletonState.Leading ? next.Node == "reset" : next.Node == "other", cluster.Recorder.Describe());
        var leading = await (next.Node == "reset" ? leader : follower).WaitForStateAsync("job", SingletonState.Leading);
        Assert.True(leading.FencingEpoch > first.FencingEpoch, $"epoch {leading.FencingEpoch} after {first.FencingEpoch}");
    }

    [Fact]
    public async Task A_child_that_ignores_cancellation_at_shutdown_is_escalated_before_its_lock_is_released()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        cluster.Behavior.IgnoreCancellation = true;
        var a = await cluster.StartNodeAsync("stuck", configure: o => o.OnEscalation = ctx =>
        {
            cluster.Recorder.Record(ctx.NodeId, ctx.Singleton, LifeKind.Escalated, ctx.Reason);
            cluster.Behavior.Kill();
            return ValueTask.CompletedTask;
        });
        await cluster.Recorder.WaitStartedAsync("job", node: "stuck");
        var b = await cluster.StartNodeAsync("other");
        await b.WaitForLeaderAsync("job", "stuck");

        var mark = cluster.Recorder.Mark();
        await a.StopAsync();
        var escalated = await cluster.Recorder.WaitAsync(e => e.Kind == LifeKind.Escalated, mark);
        var next = await cluster.Recorder.WaitStartedAsync("job", mark, node: "other");
        Assert.True(escalated.Seq < next.Seq, cluster.Recorder.Describe());
        cluster.Recorder.AssertNoOverlap();
    }

    [Fact]
    public async Task Two_hundred_singletons_on_one_node_share_one_lock_session()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var names = Enumerable.Range(0, 200).Select(i => $"s{i:000}").ToArray();
        var node = await cluster.StartNodeAsync("many", singletons: names);
        foreach (var name in names)
        {
            await node.WaitForStateAsync(name, SingletonState.Leading);
        }

        var follower = await cluster.StartNodeAsync("many-2", singletons: names);
        foreach (var name in names)
        {
            await follower.WaitForLeaderAsync(name, "many");
        }

        await node.RehearsedAsync();
        await follower.RehearsedAsync();
        Assert.Equal(1L, await Db.ScalarAsync<long>(pg.ConnectionString, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", "highlander/many"));
        Assert.InRange(await Db.ScalarAsync<long>(pg.ConnectionString, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'highlander%/many'"), 1, 2);
        Assert.InRange(await Db.ScalarAsync<long>(pg.ConnectionString, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'highlander%/many-2'"), 1, 2);
        Assert.Equal(200L, await Db.ScalarAsync<long>(pg.ConnectionString, """
            SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = 'highlander/many'
            """));
        cluster.Recorder.AssertNoOverlap();
    }

    internal static FaultProxy ProxyTo(string connectionString)
    {
        var builder = new Npgsql.NpgsqlConnectionStringBuilder(connectionString);
        return FaultProxy.Start(builder.Host!, builder.Port);
    }
}
