using System.Diagnostics;
using HighlanderPG.Discovery;
using HighlanderPG.Fencing;
using HighlanderPG.Testing;
using HighlanderPG.Tests.Hosting;
using HighlanderPG.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;

namespace HighlanderPG.Tests.Fencing;

[Collection(SharedServer.Name)]
public sealed class FencingTests(PostgresFixture pg)
{
    private static Action<HighlanderOptions> Fenced(string schema, string? endpoint = null) => o =>
    {
        o.Fencing = true;
        o.FencingSchema = schema;
        o.Endpoint = endpoint;
    };

    private static string NewSchema() => "f_" + Guid.NewGuid().ToString("N")[..10];

    /// <summary>
    /// A lease long enough that a stall of the test process (seen once in CI: ~3 s without a heartbeat answered, with the
    /// 3 s lease of <see cref="TestCluster"/>, on 2 cores shared with the other test collections) cannot end the new
    /// leader's lease and escalate its child while the test waits for it: what is tested here is fencing, not timing.
    /// </summary>
    private static void StallTolerant(HighlanderOptions o)
    {
        o.LeaseDuration = TimeSpan.FromSeconds(8);
        o.LockDelayAfterServerStart = o.LeaseDuration;
    }

    [Fact]
    public async Task A_cut_off_leaders_guarded_write_is_rejected_while_its_unguarded_write_would_go_through()
    {
        var schema = NewSchema();
        var table = schema + "_work";
        await Db.ScalarAsync<object>(pg.ConnectionString, $"CREATE TABLE {table} (writer text, epoch bigint, guarded bool)");
        await using var cluster = new TestCluster(pg.ConnectionString);
        await using var proxy = FaultTests.ProxyTo(pg.ConnectionString);

        // The old leader's child keeps a working connection of its own (not through the proxy) and ignores cancellation:
        // what a paused process, or one whose escalation did not happen, looks like when it wakes up.
        var oldChild = new TaskCompletionSource<ILeadership>(TaskCreationOptions.RunContinuationsAsynchronously);
        var writeNow = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var writes = new TaskCompletionSource<(Exception? Guarded, int Unguarded)>(TaskCreationOptions.RunContinuationsAsynchronously);
        await cluster.StartNodeAsync("old", singletons: [], connectionString: proxy.ConnectionString(pg.ConnectionString), configure: o =>
        {
            Fenced(schema)(o);
            StallTolerant(o);
            o.OnEscalation = _ => ValueTask.CompletedTask; // no escalation: the child lives on, like a paused process
        }, services: s => s.AddClusterSingleton("job", async (leadership, _, _) =>
        {
            oldChild.TrySetResult(leadership);
            await writeNow.Task;
            await using var connection = new NpgsqlConnection(pg.ConnectionString);
            await connection.OpenAsync();
            Exception? guardedError = null;
            await using (var tx = await connection.BeginTransactionAsync())
            {
                try
                {
                    await leadership.AssertCurrentAsync(tx);
                    await Insert(connection, tx, "old", leadership.FencingEpoch!.Value, guarded: true);
                    await tx.CommitAsync();
                }
                catch (StaleEpochException ex)
                {
                    guardedError = ex;
                }
            }

            await using (var tx = await connection.BeginTransactionAsync())
            {
                await Insert(connection, tx, "old", leadership.FencingEpoch!.Value, guarded: false);
                await tx.CommitAsync();
            }

            writes.TrySetResult((guardedError, 1));
        }));

        var old = await oldChild.Task.WaitAsync(TimeSpan.FromSeconds(60));
        Assert.NotNull(old.FencingEpoch);

        var newChild = new TaskCompletionSource<ILeadership>(TaskCreationOptions.RunContinuationsAsynchronously);
        var newWrote = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await cluster.StartNodeAsync("new", singletons: [], configure: o =>
        {
            Fenced(schema)(o);
            StallTolerant(o);
        }, services: s => s.AddClusterSingleton("job", async (leadership, _, ct) =>
        {
            newChild.TrySetResult(leadership);
            await using var connection = new NpgsqlConnection(pg.ConnectionString);
            await connection.OpenAsync(ct);
            await using var tx = await connection.BeginTransactionAsync(ct);
            await leadership.AssertCurrentAsync(tx, ct);
            await Insert(connection, tx, "new", leadership.FencingEpoch!.Value, guarded: true);
            await tx.CommitAsync(ct);
            newWrote.TrySetResult();
            await Task.Delay(Timeout.Infinite, ct);
        }));

        proxy.SetMode(ProxyMode.Blackhole);
        var current = await newChild.Task.WaitAsync(TimeSpan.FromSeconds(60));
        Assert.True(current.FencingEpoch > old.FencingEpoch, $"new epoch {current.FencingEpoch} must exceed old {old.FencingEpoch}");
        await newWrote.Task.WaitAsync(TimeSpan.FromSeconds(60));

        writeNow.SetResult();
        var (guarded, _) = await writes.Task.WaitAsync(TimeSpan.FromSeconds(60));
        var stale = Assert.IsType<StaleEpochException>(guarded);
        Assert.Equal(old.FencingEpoch, stale.Epoch);
        Assert.Equal(FencingSql.StaleEpochSqlState, ((PostgresException)stale.InnerException!).SqlState);

        // The unguarded write landed although its writer had lost the lease: that is what fencing is for.
        Assert.Equal(0L, await Db.ScalarAsync<long>(pg.ConnectionString, $"SELECT count(*) FROM {table} WHERE writer = 'old' AND guarded"));
        Assert.Equal(1L, await Db.ScalarAsync<long>(pg.ConnectionString, $"SELECT count(*) FROM {table} WHERE writer = 'old' AND NOT guarded"));

        async Task Insert(NpgsqlConnection connection, NpgsqlTransaction tx, string writer, long epoch, bool guarded)
        {
            await using var cmd = new NpgsqlCommand($"INSERT INTO {table} VALUES ($1, $2, $3)", connection, tx);
            cmd.Parameters.Add(new NpgsqlParameter { Value = writer });
            cmd.Parameters.Add(new NpgsqlParameter { Value = epoch });
            cmd.Parameters.Add(new NpgsqlParameter { Value = guarded });
            await cmd.ExecuteNonQueryAsync();
        }
    }

    [Fact]
    public async Task Epochs_strictly_increase_over_many_hand_overs_and_discovery_follows_each_one()
    {
        var schema = NewSchema();
        await using var cluster = new TestCluster(pg.ConnectionString);
        var epochs = new List<(string Node, long Epoch)>();
        var nodes = new List<TestNode>();
        foreach (var id in new[] { "e1", "e2" })
        {
            nodes.Add(await cluster.StartNodeAsync(id, singletons: [], configure: o =>
            {
                Fenced(schema, endpoint: $"http://{id}.example:8080")(o);
                o.StepDownHoldOff = TimeSpan.FromMilliseconds(300);
            }, services: s => s.AddClusterSingleton("job", async (leadership, _, ct) =>
            {
                lock (epochs)
                {
                    epochs.Add((leadership.NodeId, leadership.FencingEpoch!.Value));
                }

                cluster.Recorder.Record(leadership.NodeId, "job", LifeKind.Started, leadership.FencingEpoch.ToString());
                try
                {
                    await Task.Delay(Timeout.Infinite, ct);
                }
                catch (OperationCanceledException)
                {
                    cluster.Recorder.Record(leadership.NodeId, "job", LifeKind.Stopped);
                }
            })));
        }

        var started = await cluster.Recorder.WaitAsync(e => e.Kind == LifeKind.Started);
        for (var i = 0; i < 8; i++)
        {
            var leaderId = started.Node;

            // A non-participant finds the leader, its epoch and what it published. Asked until it answers with the latest
            // start's epoch: on a loaded machine (the whole suite on 2 cores) a 3 s lease can be lost and retaken between
            // the start seen and the question, and the answer must then be the newer leader, never a stale one.
            SingletonLeader? found = null;
            for (var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30); ; await Task.Delay(50))
            {
                started = cluster.Recorder.Events.Last(e => e.Kind == LifeKind.Started && e.Singleton == "job");
                found = await LeaderDiscovery.GetLeaderAsync(pg.ConnectionString, "job", cluster.Namespace, schema);
                if (found?.FencingEpoch?.ToString(System.Globalization.CultureInfo.InvariantCulture) == started.Detail || DateTime.UtcNow > deadline)
                {
                    break;
                }
            }

            leaderId = started.Node;
            Assert.NotNull(found);
            Assert.Equal(leaderId, found.Leader.NodeId);
            Assert.Equal("job", found.Name);
            Assert.Equal(long.Parse(started.Detail!, System.Globalization.CultureInfo.InvariantCulture), found.FencingEpoch);
            Assert.Equal($"http://{leaderId}.example:8080", found.Endpoint);
            Assert.NotNull(found.Since);

            // The other node contends again once its own hold-off after its last step-down is over.
            var other = nodes.Single(n => n.NodeId != leaderId);
            await other.WaitForLeaderAsync("job", leaderId);

            var mark = cluster.Recorder.Mark();
            await nodes.Single(n => n.NodeId == leaderId).Singletons.StepDownAsync("job");
            started = await cluster.Recorder.WaitStartedAsync("job", mark, notNode: leaderId);
        }

        cluster.Recorder.AssertNoOverlap();
        var sequence = epochs.Select(e => e.Epoch).ToList();
        Assert.True(sequence.Count >= 9);
        Assert.True(sequence.Zip(sequence.Skip(1)).All(p => p.Second > p.First), "epochs: " + string.Join(", ", sequence));
    }

    [Fact]
    public async Task The_SQL_guard_works_from_plain_psql()
    {
        var schema = NewSchema();
        await using var cluster = new TestCluster(pg.ConnectionString);
        var node = await cluster.StartNodeAsync("p", configure: Fenced(schema));
        await node.WaitForStateAsync("job", SingletonState.Leading);
        var epoch = node.Singletons.Get("job")!.FencingEpoch!.Value;

        var ok = await Psql($"BEGIN; SELECT {schema}.assert_epoch('job', {epoch}, '{cluster.Namespace}'); COMMIT;");
        Assert.True(ok.ExitCode == 0, ok.Output);

        var stale = await Psql($"BEGIN; SELECT {schema}.assert_epoch('job', {epoch - 1}, '{cluster.Namespace}'); COMMIT;");
        Assert.NotEqual(0, stale.ExitCode);
        Assert.Contains("stale fencing epoch", stale.Output);
        Assert.Contains(FencingSql.StaleEpochSqlState, stale.Output);

        var unknown = await Psql($"SELECT {schema}.assert_epoch('no-such-singleton', 1, '{cluster.Namespace}');");
        Assert.NotEqual(0, unknown.ExitCode);
        Assert.Contains("stale fencing epoch", unknown.Output);
    }

    [Fact]
    public async Task The_documented_grants_are_enough_for_a_node_and_a_writer()
    {
        // A DBA creates the table and function ahead (as the README says), then grants a node role only what the
        // README lists, and a writer role only USAGE and EXECUTE: fencing works for both, and the writer cannot touch
        // the table itself.
        var schema = NewSchema();
        var nodeRole = schema + "_node";
        var writerRole = schema + "_writer";
        var password = Guid.NewGuid().ToString("N");
        await Db.ScalarAsync<object>(pg.ConnectionString, FencingSql.Ddl(schema));
        await Db.ScalarAsync<object>(pg.ConnectionString, $"""
            CREATE ROLE {nodeRole} LOGIN PASSWORD '{password}';
            CREATE ROLE {writerRole} LOGIN PASSWORD '{password}';
            GRANT USAGE ON SCHEMA {schema} TO {nodeRole}, {writerRole};
            GRANT SELECT, INSERT, UPDATE ON {schema}.leases TO {nodeRole};
            GRANT EXECUTE ON FUNCTION {schema}.assert_epoch(text, bigint, text) TO {writerRole};
            """);
        try
        {
            string As(string role) => new NpgsqlConnectionStringBuilder(pg.ConnectionString) { Username = role, Password = password }.ConnectionString;
            await using var cluster = new TestCluster(pg.ConnectionString);
            var node = await cluster.StartNodeAsync("least", connectionString: As(nodeRole), configure: Fenced(schema));

            // Without DELETE (a name moved to another key takes its epoch along) the bump is refused, no child runs,
            // and the error says what to grant; once granted, the node leads without a restart.
            var refused = await cluster.Logs.WaitAsync(e => e.Node == "least" && e.Exception?.Message.Contains("permission denied", StringComparison.Ordinal) == true);
            Assert.Contains($"SELECT, INSERT, UPDATE, DELETE on {schema}.leases", refused.Exception!.Message);
            Assert.Equal(0, cluster.Recorder.Count);
            await Db.ScalarAsync<object>(pg.ConnectionString, $"GRANT DELETE ON {schema}.leases TO {nodeRole}");
            var leading = await node.WaitForStateAsync("job", SingletonState.Leading);
            var epoch = leading.FencingEpoch!.Value;
            Assert.Equal(nodeRole, await Db.ScalarAsync<string>(pg.ConnectionString,
                "SELECT usename::text FROM pg_stat_activity WHERE application_name = 'highlander/least'"));

            await using var writer = new NpgsqlConnection(new NpgsqlConnectionStringBuilder(As(writerRole)) { Pooling = false }.ConnectionString);
            await writer.OpenAsync();
            await using (var tx = await writer.BeginTransactionAsync())
            {
                await FencingGuard.AssertEpochAsync(tx, "job", epoch, cluster.Namespace, schema);
                await tx.CommitAsync();
            }

            await using (var tx = await writer.BeginTransactionAsync())
            {
                await Assert.ThrowsAsync<StaleEpochException>(() => FencingGuard.AssertEpochAsync(tx, "job", epoch - 1, cluster.Namespace, schema));
            }

            await using (var read = new NpgsqlCommand($"SELECT count(*) FROM {schema}.leases", writer))
            {
                var denied = await Assert.ThrowsAsync<PostgresException>(() => read.ExecuteScalarAsync());
                Assert.Equal(PostgresErrorCodes.InsufficientPrivilege, denied.SqlState);
            }

            await using (var nodeConnection = new NpgsqlConnection(new NpgsqlConnectionStringBuilder(As(nodeRole)) { Pooling = false }.ConnectionString))
            {
                await nodeConnection.OpenAsync();
                await using var call = new NpgsqlCommand($"SELECT {schema}.assert_epoch('job', $1, $2)", nodeConnection);
                call.Parameters.Add(new NpgsqlParameter<long> { TypedValue = epoch });
                call.Parameters.Add(new NpgsqlParameter<string> { TypedValue = cluster.Namespace });
                var denied = await Assert.ThrowsAsync<PostgresException>(() => call.ExecuteScalarAsync());
                Assert.Equal(PostgresErrorCodes.InsufficientPrivilege, denied.SqlState); // EXECUTE is revoked from PUBLIC
            }
        }
        finally
        {
            await using (var cleanup = new NpgsqlConnection(new NpgsqlConnectionStringBuilder(pg.ConnectionString) { Pooling = false }.ConnectionString))
            {
                await cleanup.OpenAsync();
                await using var terminate = new NpgsqlCommand("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename IN ($1, $2)", cleanup);
                terminate.Parameters.Add(new NpgsqlParameter<string> { TypedValue = nodeRole });
                terminate.Parameters.Add(new NpgsqlParameter<string> { TypedValue = writerRole });
                await terminate.ExecuteNonQueryAsync();
            }

            await Db.ScalarAsync<object>(pg.ConnectionString, $"DROP OWNED BY {nodeRole}, {writerRole}; DROP ROLE {nodeRole}; DROP ROLE {writerRole};");
        }
    }

    private async Task<(int ExitCode, string Output)> Psql(string sql)
    {
        var b = new NpgsqlConnectionStringBuilder(pg.ConnectionString);
        var psi = new ProcessStartInfo("psql")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var arg in new[] { "-X", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", "-h", b.Host!, "-p", b.Port.ToString(System.Globalization.CultureInfo.InvariantCulture), "-U", b.Username ?? "postgres", "-d", b.Database ?? "postgres", "-c", sql })
        {
            psi.ArgumentList.Add(arg);
        }

        if (!string.IsNullOrEmpty(b.Password))
        {
            psi.Environment["PGPASSWORD"] = b.Password;
        }

        psi.Environment["PGOPTIONS"] = "-c lc_messages=C";
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        return (process.ExitCode, await stdout + await stderr);
    }

    [Fact]
    public async Task Discovery_works_without_the_fencing_table_for_named_singletons()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        await cluster.StartNodeAsync("plain");
        await cluster.Recorder.WaitStartedAsync("job", node: "plain");
        var follower = await cluster.StartNodeAsync("watcher");
        await follower.WaitForLeaderAsync("job", "plain");

        var all = await LeaderDiscovery.ListAsync(pg.ConnectionString, ["job"], cluster.Namespace, fencingSchema: NewSchema());
        var found = Assert.Single(all, l => l.Key == SingletonKey.Derive(cluster.Namespace, "job"));
        Assert.Equal("job", found.Name);
        Assert.Equal("plain", found.Leader.NodeId);
        Assert.Null(found.FencingEpoch);
        Assert.Null(found.Endpoint);
    }
}

/// <summary>Fencing against a server of its own: durability across a crash restart, and nothing created when off.</summary>
public sealed class FencingServerTests
{
    [Fact]
    public async Task Epochs_keep_increasing_across_server_restarts()
    {
        await using var server = await LocalPostgresServer.StartAsync();
        await using var cluster = new TestCluster(server.ConnectionString);
        var node = await cluster.StartNodeAsync("r", configure: o => o.Fencing = true);
        var epochs = new List<long>();
        foreach (var mode in new[] { ShutdownMode.Immediate, ShutdownMode.Fast, ShutdownMode.Immediate })
        {
            var leading = await node.WaitForStateAsync("job", SingletonState.Leading);
            epochs.Add(leading.FencingEpoch!.Value);
            var mark = cluster.Recorder.Mark();
            await server.RestartAsync(mode);
            await cluster.Recorder.WaitStoppedAsync("job", "r", mark);
            await cluster.Recorder.WaitStartedAsync("job", mark);
        }

        epochs.Add((await node.WaitForStateAsync("job", SingletonState.Leading)).FencingEpoch!.Value);
        Assert.True(epochs.Zip(epochs.Skip(1)).All(p => p.Second > p.First), "epochs: " + string.Join(", ", epochs));
    }

    [Fact]
    public async Task With_fencing_off_no_table_is_created()
    {
        await using var server = await LocalPostgresServer.StartAsync();
        await using var cluster = new TestCluster(server.ConnectionString);
        var node = await cluster.StartNodeAsync("off");
        var leading = await node.WaitForStateAsync("job", SingletonState.Leading);
        Assert.Null(leading.FencingEpoch);
        Assert.Equal(0L, await Db.ScalarAsync<long>(server.ConnectionString, "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'highlander'"));
        Assert.Equal(0L, await Db.ScalarAsync<long>(server.ConnectionString, "SELECT count(*) FROM pg_class WHERE relname = 'leases'"));
    }
}
