using HighlanderPG.Diagnostics;
using HighlanderPG.Leasing;
using HighlanderPG.Fencing;
using HighlanderPG.Operations;
using HighlanderPG.Tests.Infrastructure;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;

namespace HighlanderPG.Tests.Operations;

/// <summary>
/// Step down and drain from a plain connection (not a node), through <see cref="ClusterControl"/> and the SQL functions.
/// Node ids are unique per test: hold-offs are durable and keyed by node id, across namespaces.
/// </summary>
[Collection(SharedServer.Name)]
public sealed class ClusterControlTests(PostgresFixture pg)
{
    private static string Id(string name) => name + "-" + Guid.NewGuid().ToString("N")[..8];

    /// <summary>Node a leads "job", node b follows it.</summary>
    private static async Task<(TestNode A, TestNode B)> StartTwoAsync(TestCluster cluster)
    {
        var (idA, idB) = (Id("a"), Id("b"));
        var a = await cluster.StartNodeAsync(idA);
        await cluster.Recorder.WaitStartedAsync("job", node: idA);
        var b = await cluster.StartNodeAsync(idB);
        await b.WaitForLeaderAsync("job", idA);
        return (a, b);
    }

    [Fact]
    public async Task A_step_down_from_anywhere_moves_the_singleton_gracefully_and_the_old_leader_stays_off_during_the_hold_off()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var (a, b) = await StartTwoAsync(cluster);
        var (idA, idB) = (a.NodeId, b.NodeId);
        await using var control = new ClusterControl(pg.ConnectionString, cluster.Namespace);

        var mark = cluster.Recorder.Mark();
        var result = await control.StepDownAsync("job", holdOff: TimeSpan.FromMinutes(5));
        Assert.Equal(idA, result.NodeId);
        Assert.Equal(SingletonKey.Derive(cluster.Namespace, "job"), result.Key);
        Assert.Contains(idB, result.OtherNodes);

        // Graceful: a's child stopped before b's started; a follows b.
        var stopped = await cluster.Recorder.WaitStoppedAsync("job", idA, mark);
        var started = await cluster.Recorder.WaitStartedAsync("job", mark, node: idB);
        Assert.True(stopped.Seq < started.Seq, cluster.Recorder.Describe());
        var moved = await control.WaitMovedAsync(idA, [result.Key]).WaitAsync(TimeSpan.FromSeconds(60));
        Assert.Equal(idB, Assert.Single(moved).Leader!.NodeId);
        await a.WaitForLeaderAsync("job", idB);
        Assert.Equal(0, a.Singletons.Get("job")!.Restarts);

        // b steps down locally (its own hold-off is the node's StepDownHoldOff, 2 s): the lock is free meanwhile, but a is
        // held off for 5 minutes, so the next start is b's again.
        var mark2 = cluster.Recorder.Mark();
        await b.Singletons.StepDownAsync("job");
        var again = await cluster.Recorder.WaitStartedAsync("job", mark2);
        Assert.Equal(idB, again.Node);

        // Once the hold-off is ended (undrain), a takes it when b goes.
        Assert.Equal(1, await control.UndrainAsync(idA));
        var mark3 = cluster.Recorder.Mark();
        await b.StopAsync();
        await cluster.Recorder.WaitStartedAsync("job", mark3, node: idA);
        cluster.Recorder.AssertNoOverlap();
    }

    [Fact]
    public async Task The_old_leader_takes_the_singleton_back_once_its_hold_off_has_ended()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var (a, b) = await StartTwoAsync(cluster);
        var (idA, idB) = (a.NodeId, b.NodeId);
        await using var control = new ClusterControl(pg.ConnectionString, cluster.Namespace);

        var mark = cluster.Recorder.Mark();
        var result = await control.StepDownAsync("job", idA, TimeSpan.FromSeconds(6));
        await cluster.Recorder.WaitStartedAsync("job", mark, node: idB);
        await a.WaitForLeaderAsync("job", idB);

        // b goes at once: a may take it only when its hold-off has ended (the same machine's clock as the server's).
        var mark2 = cluster.Recorder.Mark();
        await b.StopAsync();
        var back = await cluster.Recorder.WaitStartedAsync("job", mark2, node: idA);
        Assert.True(back.At >= result.HoldOffUntil, $"a started at {back.At:O}, before its hold-off ended at {result.HoldOffUntil:O}");
        cluster.Recorder.AssertNoOverlap();
    }

    [Fact]
    public async Task A_drain_moves_every_singleton_off_the_node_which_stays_drained_across_a_restart_until_undrain()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var (idA, idB) = (Id("a"), Id("b"));
        string[] names = ["s1", "s2", "s3"];
        var a = await cluster.StartNodeAsync(idA, names);
        foreach (var name in names)
        {
            await a.WaitForStateAsync(name, SingletonState.Leading);
        }

        var b = await cluster.StartNodeAsync(idB, names);
        foreach (var name in names)
        {
            await b.WaitForLeaderAsync(name, idA);
        }

        await using var control = new ClusterControl(pg.ConnectionString, cluster.Namespace);
        var mark = cluster.Recorder.Mark();
        var drain = await control.DrainAsync(idA, TimeSpan.FromMinutes(10));
        Assert.Equal(idA, drain.NodeId);
        Assert.Equal(names.Select(n => SingletonKey.Derive(cluster.Namespace, n)).Order(), drain.Singletons.Select(s => s.Key).Order());
        Assert.Contains(idB, drain.OtherNodes);
        foreach (var name in names)
        {
            var stopped = await cluster.Recorder.WaitStoppedAsync(name, idA, mark);
            var started = await cluster.Recorder.WaitStartedAsync(name, mark, node: idB);
            Assert.True(stopped.Seq < started.Seq, cluster.Recorder.Describe());
        }

        var moved = await control.WaitMovedAsync(idA, [.. drain.Singletons.Select(s => s.Key)]).WaitAsync(TimeSpan.FromSeconds(60));
        Assert.All(moved, s => Assert.Equal(idB, s.Leader!.NodeId));

        // Restarted during the drain, a stays drained: it follows, and takes nothing even when b goes.
        await a.StopAsync();
        var a2 = await cluster.StartNodeAsync(idA, names);
        foreach (var name in names)
        {
            await a2.WaitForLeaderAsync(name, idB);
        }

        var mark2 = cluster.Recorder.Mark();
        await b.StopAsync();
        foreach (var name in names)
        {
            await cluster.Recorder.WaitStoppedAsync(name, idB, mark2);
        }

        // An observation window (not a synchronisation): a drained node that saw the locks freed must still take none.
        await Task.Delay(TimeSpan.FromSeconds(3));
        Assert.DoesNotContain(cluster.Recorder.Events.Skip(mark2), e => e.Kind == LifeKind.Started);
        Assert.All(names, n => Assert.NotEqual(SingletonState.Leading, a2.Singletons.Get(n)!.State));

        // Undrained, it takes them all.
        Assert.True(await control.UndrainAsync(idA) >= 1);
        foreach (var name in names)
        {
            await cluster.Recorder.WaitStartedAsync(name, mark2, node: idA);
        }

        cluster.Recorder.AssertNoOverlap();
    }

    [Fact]
    public async Task A_hold_off_read_that_fails_for_a_while_is_an_error_not_an_empty_answer_that_would_end_a_drain()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var idA = Id("a");
        await cluster.StartNodeAsync(idA);
        await cluster.Recorder.WaitStartedAsync("job", node: idA);
        await using var control = new ClusterControl(pg.ConnectionString, cluster.Namespace);
        await control.DrainAsync(idA, TimeSpan.FromMinutes(10));
        var options = new HighlanderOptions { NodeId = idA };

        await using var reader = new NpgsqlConnection(pg.ConnectionString);
        await reader.OpenAsync();
        await using (var set = new NpgsqlCommand("SET statement_timeout = '200ms'", reader))
        {
            await set.ExecuteNonQueryAsync();
        }

        await using (var ddl = new NpgsqlConnection(pg.ConnectionString))
        {
            // The table locked (a DBA's DDL, say): the read times out. Read as "no hold-off", that ended the node's drain.
            await ddl.OpenAsync();
            await using var tx = await ddl.BeginTransactionAsync();
            await using (var lockTable = new NpgsqlCommand($"LOCK TABLE {options.FencingSchema}.hold_offs IN ACCESS EXCLUSIVE MODE", ddl))
            {
                await lockTable.ExecuteNonQueryAsync();
            }

            var failed = await Assert.ThrowsAsync<PostgresException>(() => ControlSession.ReadAsync(reader, options, long.MaxValue, NullLogger.Instance, CancellationToken.None));
            Assert.Equal(PostgresErrorCodes.QueryCanceled, failed.SqlState);
        }

        var read = await ControlSession.ReadAsync(reader, options, long.MaxValue, NullLogger.Instance, CancellationToken.None);
        Assert.NotNull(read.All);
        Assert.InRange(read.All!.Value, TimeSpan.FromMinutes(9), TimeSpan.FromMinutes(10));

        // A row written by hand with an endless hold-off reads as the longest the node keeps (it failed the read before).
        await Db.ScalarAsync<object>(pg.ConnectionString, $"INSERT INTO {options.FencingSchema}.hold_offs (node_id, key, until) VALUES ($1, 42, 'infinity')", idA);
        read = await ControlSession.ReadAsync(reader, options, long.MaxValue, NullLogger.Instance, CancellationToken.None);
        Assert.Equal(KeyLedger.MaxHoldOff, read.Keys[42]);
        Assert.Equal(2, await control.UndrainAsync(idA));
    }

    [Fact]
    public async Task A_role_without_the_grant_gets_an_error_naming_it_and_with_the_grant_it_works()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var idA = Id("a");
        var a = await cluster.StartNodeAsync(idA);
        await a.WaitForStateAsync("job", SingletonState.Leading);
        await using (var owner = new ClusterControl(pg.ConnectionString, cluster.Namespace))
        {
            // Creates the control objects (the superuser may); the operator role below may not.
            Assert.Equal(0, await owner.UndrainAsync(idA));
        }

        var role = "ctl_" + Guid.NewGuid().ToString("N")[..10];
        var password = Guid.NewGuid().ToString("N");
        await Db.ScalarAsync<object>(pg.ConnectionString, $"CREATE ROLE {role} LOGIN PASSWORD '{password}'");
        var asRole = new NpgsqlConnectionStringBuilder(pg.ConnectionString) { Username = role, Password = password, Pooling = false }.ConnectionString;
        await using var control = new ClusterControl(asRole, cluster.Namespace);

        var refused = await Assert.ThrowsAsync<ClusterControlException>(() => control.StepDownAsync("job"));
        Assert.Equal("42501", refused.SqlState);
        Assert.Contains($"GRANT EXECUTE ON FUNCTION highlander.step_down(bigint, text, interval, text) TO {role}", refused.Message);
        Assert.Equal(SingletonState.Leading, a.Singletons.Get("job")!.State);

        // USAGE alone is not enough: EXECUTE is revoked from PUBLIC.
        await Db.ScalarAsync<object>(pg.ConnectionString, $"GRANT USAGE ON SCHEMA highlander TO {role}");
        refused = await Assert.ThrowsAsync<ClusterControlException>(() => control.StepDownAsync("job"));
        Assert.Equal("42501", refused.SqlState);

        await Db.ScalarAsync<object>(pg.ConnectionString, $"GRANT EXECUTE ON FUNCTION highlander.step_down(bigint, text, interval, text) TO {role}");
        var mark = cluster.Recorder.Mark();
        var done = await control.StepDownAsync("job", holdOff: TimeSpan.Zero);
        Assert.Equal(idA, done.NodeId);
        await cluster.Recorder.WaitStoppedAsync("job", idA, mark);
        await cluster.Recorder.WaitStartedAsync("job", mark, node: idA);
        Assert.Equal(role, await Db.ScalarAsync<string>(pg.ConnectionString,
            "SELECT requested_by FROM highlander.hold_offs WHERE node_id = $1 ORDER BY id DESC LIMIT 1", idA));
        cluster.Recorder.AssertNoOverlap();
    }

    [Fact]
    public async Task A_node_whose_role_does_not_own_an_existing_fencing_schema_runs_on_and_obeys_once_the_owner_ran_the_control_ddl()
    {
        // An existing fencing schema, created by a DBA; the node's role has only what the README lists for fencing.
        var schema = "ctl_" + Guid.NewGuid().ToString("N")[..10];
        var nodeRole = schema + "_node";
        var password = Guid.NewGuid().ToString("N");
        await Db.ScalarAsync<object>(pg.ConnectionString, FencingSql.Ddl(schema));
        await Db.ScalarAsync<object>(pg.ConnectionString, $"""
            CREATE ROLE {nodeRole} LOGIN PASSWORD '{password}';
            GRANT USAGE ON SCHEMA {schema} TO {nodeRole};
            GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.leases TO {nodeRole};
            """);
        var asNode = new NpgsqlConnectionStringBuilder(pg.ConnectionString) { Username = nodeRole, Password = password }.ConnectionString;
        await using var cluster = new TestCluster(pg.ConnectionString);
        var idA = Id("a");
        var a = await cluster.StartNodeAsync(idA, connectionString: asNode, configure: o =>
        {
            o.Fencing = true;
            o.FencingSchema = schema;
        });

        // It may not create the control objects: it says so and leads all the same.
        await cluster.Logs.WaitAsync(e => e.Node == idA && e.EventId.Id == HighlanderEventIds.ControlUnavailable);
        await a.WaitForStateAsync("job", SingletonState.Leading);

        // The owner creates them (ClusterControl does, as the owner); the node, listening already, obeys a step-down.
        await using var control = new ClusterControl(pg.ConnectionString, cluster.Namespace, schema);
        var mark = cluster.Recorder.Mark();
        var result = await control.StepDownAsync("job", idA, TimeSpan.FromMinutes(5));
        Assert.Equal(idA, result.NodeId);
        await cluster.Recorder.WaitStoppedAsync("job", idA, mark);
        await a.WaitForStateAsync("job", SingletonState.Following);
        Assert.Equal(1, await control.UndrainAsync(idA));
        await cluster.Recorder.WaitStartedAsync("job", mark, node: idA);
        cluster.Recorder.AssertNoOverlap();
    }

    [Fact]
    public async Task Bad_requests_get_clear_errors_and_change_nothing()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var idA = Id("a");
        var a = await cluster.StartNodeAsync(idA);
        await a.WaitForStateAsync("job", SingletonState.Leading);
        await using var control = new ClusterControl(pg.ConnectionString, cluster.Namespace);

        var nobody = await Assert.ThrowsAsync<ClusterControlException>(() => control.StepDownAsync("no-such-job"));
        Assert.Equal(ControlSql.NobodyLeadsSqlState, nobody.SqlState);
        Assert.Contains("nobody leads", nobody.Message);

        var notLeader = await Assert.ThrowsAsync<ClusterControlException>(() => control.StepDownAsync("job", "someone-else"));
        Assert.Equal(ControlSql.NotLeaderSqlState, notLeader.SqlState);
        Assert.Contains($"node \"{idA}\" does", notLeader.Message);

        var unknown = await Assert.ThrowsAsync<ClusterControlException>(() => control.DrainAsync(idA + "-typo"));
        Assert.Equal(ControlSql.UnknownNodeSqlState, unknown.SqlState);
        Assert.Contains("no live node", unknown.Message);

        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => control.StepDownAsync("job", holdOff: TimeSpan.FromSeconds(-1)));
        await Assert.ThrowsAsync<ArgumentException>(() => control.StepDownAsync(" "));
        await Assert.ThrowsAsync<ArgumentException>(() => control.DrainAsync(""));

        // The SQL functions check the same for callers in any language.
        var negative = await Assert.ThrowsAsync<PostgresException>(() => Db.ScalarAsync<object>(pg.ConnectionString,
            "SELECT * FROM highlander.drain($1, interval '-1 minute')", idA));
        Assert.Equal(ControlSql.BadArgumentSqlState, negative.SqlState);

        Assert.Equal(SingletonState.Leading, a.Singletons.Get("job")!.State);
        Assert.Equal(0L, await Db.ScalarAsync<long>(pg.ConnectionString, "SELECT count(*) FROM highlander.hold_offs WHERE node_id = $1", idA));
    }
}
