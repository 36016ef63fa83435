using HighlanderPG.Diagnostics;
using HighlanderPG.Fencing;
using HighlanderPG.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;

namespace HighlanderPG.Tests.Fencing;

/// <summary>
/// The next leader's take-over against the old leader's guarded transactions: a frozen writer does not hold it back
/// beyond the lease, writers of a holder whose session has ended are refused at once and cannot starve the epoch bump,
/// and fencing objects of the first version are upgraded in place (docs/lease-protocol.md, "Fencing").
/// </summary>
[Collection(SharedServer.Name)]
public sealed class FencingTakeOverTests(PostgresFixture pg)
{
    private static Action<HighlanderOptions> Fenced(string schema) => o =>
    {
        o.Fencing = true;
        o.FencingSchema = schema;
    };

    private static string NewSchema() => "f_" + Guid.NewGuid().ToString("N")[..10];

    private string Unpooled => new NpgsqlConnectionStringBuilder(pg.ConnectionString) { Pooling = false }.ConnectionString;

    [Fact]
    public async Task A_frozen_guarded_transaction_is_ended_by_the_server_before_the_next_leader_starts()
    {
        var schema = NewSchema();
        await using var cluster = new TestCluster(pg.ConnectionString);
        var a = await cluster.StartNodeAsync("a", configure: Fenced(schema));
        var epoch = (await a.WaitForStateAsync("job", SingletonState.Leading)).FencingEpoch!.Value;

        // The frozen writer: a guarded transaction that asserted the epoch and then does nothing (its process stopped
        // between two statements). The test never ends it.
        await using var frozen = new NpgsqlConnection(Unpooled);
        await frozen.OpenAsync();
        var tx = await frozen.BeginTransactionAsync();
        await FencingGuard.AssertEpochAsync(tx, "job", epoch, cluster.Namespace, schema);

        // B's child, as it starts, tries the frozen transaction's next statement: it must find it ended already.
        var started = new TaskCompletionSource<(long Epoch, Exception? FrozenNext)>(TaskCreationOptions.RunContinuationsAsynchronously);
        var b = await cluster.StartNodeAsync("b", singletons: [], configure: Fenced(schema), services: s => s.AddClusterSingleton("job", async (leadership, _, ct) =>
        {
            Exception? next = null;
            try
            {
                await using var cmd = new NpgsqlCommand("SELECT 1", frozen, tx);
                await cmd.ExecuteScalarAsync(CancellationToken.None);
            }
            catch (Exception ex)
            {
                next = ex;
            }

            started.TrySetResult((leadership.FencingEpoch!.Value, next));
            await Task.Delay(Timeout.Infinite, ct);
        }));
        await b.WaitForLeaderAsync("job", "a");

        await a.StopAsync();
        var (newEpoch, frozenNext) = await started.Task.WaitAsync(TimeSpan.FromSeconds(60));
        Assert.True(newEpoch > epoch, $"new epoch {newEpoch} must exceed {epoch}");
        Assert.NotNull(frozenNext);
        var ended = frozenNext as PostgresException ?? frozenNext.InnerException as PostgresException;
        Assert.True(ended is { SqlState: "25P03" }, $"the frozen transaction's next statement must fail with 25P03, got: {frozenNext}");
    }

    [Fact]
    public async Task A_guarded_transaction_is_refused_once_the_holders_session_has_ended_before_the_bump_lands()
    {
        var schema = NewSchema();
        await using var cluster = new TestCluster(pg.ConnectionString);
        var starts = new Starts();
        await StartRecordingNodeAsync(cluster, "a", schema, starts);
        var (_, epoch) = await starts.WaitAsync(_ => true);
        var b = await StartRecordingNodeAsync(cluster, "b", schema, starts);
        await b.WaitForLeaderAsync("job", "a");
        var key = SingletonKey.Derive(cluster.Namespace, "job");
        var holder = (await Db.HolderPidAsync(pg.ConnectionString, key))!.Value;

        // T1 holds the row FOR SHARE for as long as the test wants (it lifts the guard's idle bound for itself), so the
        // next leader's bump cannot land.
        await using var t1Connection = new NpgsqlConnection(Unpooled);
        await t1Connection.OpenAsync();
        await using var t1 = await t1Connection.BeginTransactionAsync();
        await FencingGuard.AssertEpochAsync(t1, "job", epoch, cluster.Namespace, schema);
        await Execute(t1Connection, t1, "SET LOCAL idle_in_transaction_session_timeout = 0");

        Assert.True(await Db.ScalarAsync<bool>(pg.ConnectionString, "SELECT pg_terminate_backend($1, 30000)", holder));

        // A new holder (either node) has the lock, and its bump waits for T1.
        var newHolder = await PollAsync(async () => await Db.HolderPidAsync(pg.ConnectionString, key) is { } pid && pid != holder);
        Assert.True(newHolder, "no node took the lock after the holder's session ended");

        await using (var t2Connection = new NpgsqlConnection(Unpooled))
        {
            await t2Connection.OpenAsync();
            await using var t2 = await t2Connection.BeginTransactionAsync();
            var refused = await Assert.ThrowsAsync<StaleEpochException>(() => FencingGuard.AssertEpochAsync(t2, "job", epoch, cluster.Namespace, schema));
            var inner = Assert.IsType<PostgresException>(refused.InnerException);
            Assert.Equal(FencingSql.StaleEpochSqlState, inner.SqlState);
            Assert.Contains("has ended", inner.MessageText);
        }

        Assert.Equal(epoch, await Db.ScalarAsync<long>(pg.ConnectionString, $"SELECT epoch FROM {schema}.leases WHERE namespace = $1 AND name = 'job'", cluster.Namespace));
        Assert.DoesNotContain(starts.All, s => s.Epoch > epoch);

        await t1.RollbackAsync();
        var (_, newEpoch) = await starts.WaitAsync(s => s.Epoch > epoch);
        Assert.True(newEpoch > epoch);
    }

    [Fact]
    public async Task Writers_hammering_with_the_old_epoch_cannot_starve_the_next_leader_nor_commit_after_the_holders_session_ended()
    {
        var schema = NewSchema();
        var table = schema + "_work";
        await Db.ScalarAsync<object>(pg.ConnectionString, $"CREATE TABLE {table} (epoch bigint NOT NULL, began timestamptz NOT NULL)");
        await using var cluster = new TestCluster(pg.ConnectionString);
        var starts = new Starts();
        await StartRecordingNodeAsync(cluster, "a", schema, starts);
        var (_, epoch) = await starts.WaitAsync(_ => true);
        var b = await StartRecordingNodeAsync(cluster, "b", schema, starts);
        await b.WaitForLeaderAsync("job", "a");
        var key = SingletonKey.Derive(cluster.Namespace, "job");
        var holder = (await Db.HolderPidAsync(pg.ConnectionString, key))!.Value;

        using var stop = new CancellationTokenSource();
        var committed = 0;
        var refused = 0;
        var attempts = 0;
        var firstCommit = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var writers = Enumerable.Range(0, 4).Select(_ => Task.Run(async () =>
        {
            await using var connection = new NpgsqlConnection(Unpooled);
            await connection.OpenAsync();
            while (!stop.IsCancellationRequested)
            {
                Interlocked.Increment(ref attempts);
                await using var tx = await connection.BeginTransactionAsync();
                try
                {
                    await FencingGuard.AssertEpochAsync(tx, "job", epoch, cluster.Namespace, schema);
                }
                catch (StaleEpochException)
                {
                    Interlocked.Increment(ref refused);
                    await tx.RollbackAsync();
                    continue;
                }

                await using (var insert = new NpgsqlCommand($"INSERT INTO {table} VALUES ($1, transaction_timestamp())", connection, tx))
                {
                    insert.Parameters.Add(new NpgsqlParameter<long> { TypedValue = epoch });
                    await insert.ExecuteNonQueryAsync();
                }

                await tx.CommitAsync();
                Interlocked.Increment(ref committed);
                firstCommit.TrySetResult();
            }
        })).ToList();

        await firstCommit.Task.WaitAsync(TimeSpan.FromSeconds(60));

        // T1 holds the bump back at first (it lifts the guard's idle bound for itself), so that the writers meet the
        // window between the holder's end and the bump for sure.
        await using var t1Connection = new NpgsqlConnection(Unpooled);
        await t1Connection.OpenAsync();
        var t1 = await t1Connection.BeginTransactionAsync();
        await FencingGuard.AssertEpochAsync(t1, "job", epoch, cluster.Namespace, schema);
        await Execute(t1Connection, t1, "SET LOCAL idle_in_transaction_session_timeout = 0");

        // The holder's session ends (the call waits until its backend is gone); from then on no guarded transaction
        // with its epoch may commit, and the next leader's bump must land although the writers keep trying.
        DateTime ended;
        await using (var admin = new NpgsqlConnection(Unpooled))
        {
            await admin.OpenAsync();
            await using (var terminate = new NpgsqlCommand("SELECT pg_terminate_backend($1, 30000)", admin))
            {
                terminate.Parameters.Add(new NpgsqlParameter<int> { TypedValue = holder });
                Assert.True((bool)(await terminate.ExecuteScalarAsync())!);
            }

            await using var now = new NpgsqlCommand("SELECT clock_timestamp()", admin);
            ended = (DateTime)(await now.ExecuteScalarAsync())!;
        }

        // Every writer tries many times while the bump is held back, then T1 ends and the bump must win against them.
        var mark = Volatile.Read(ref attempts);
        Assert.True(await PollAsync(() => Task.FromResult(Volatile.Read(ref attempts) >= mark + 200)), "the writers stalled");
        await t1.RollbackAsync();

        try
        {
            var (_, newEpoch) = await starts.WaitAsync(s => s.Epoch > epoch);
            Assert.True(newEpoch > epoch);
            Assert.False(writers.Any(w => w.IsCompleted), "a writer stopped early: " + writers.FirstOrDefault(w => w.IsFaulted)?.Exception);
        }
        finally
        {
            await stop.CancelAsync();
            await Task.WhenAll(writers);
        }

        Assert.True(Volatile.Read(ref refused) > 0, "the writers were never refused");
        Assert.True(await Db.ScalarAsync<long>(pg.ConnectionString, $"SELECT count(*) FROM {table} WHERE began < $1", ended) > 0);
        var late = await Db.ScalarAsync<long>(pg.ConnectionString, $"SELECT count(*) FROM {table} WHERE began > $1", ended);
        Assert.True(late == 0, $"{late} guarded transactions with epoch {epoch} that began after the holder's session ended committed ({Volatile.Read(ref committed)} committed in all, {Volatile.Read(ref refused)} refused)");
    }

    [Fact]
    public async Task Fencing_objects_of_the_first_version_are_upgraded_on_first_use_and_keep_their_epochs()
    {
        var schema = NewSchema();
        await using var cluster = new TestCluster(pg.ConnectionString);
        var key = SingletonKey.Derive(cluster.Namespace, "job");
        await Db.ScalarAsync<object>(pg.ConnectionString, FirstVersionDdl(schema));
        await Db.ScalarAsync<object>(pg.ConnectionString, $"INSERT INTO {schema}.leases VALUES ($1, $2, 'job', 41, 'gone', NULL, NULL, 1, now())", key, cluster.Namespace);

        var node = await cluster.StartNodeAsync("u", configure: Fenced(schema));
        var epoch = (await node.WaitForStateAsync("job", SingletonState.Leading)).FencingEpoch!.Value;
        Assert.Equal(42, epoch);
        Assert.Equal(FencingSql.GuardVersion, await Db.ScalarAsync<string>(pg.ConnectionString, $"SELECT obj_description('{schema}.assert_epoch(text,bigint,text)'::regprocedure, 'pg_proc')"));
        Assert.Equal(3000, await Db.ScalarAsync<int>(pg.ConnectionString, $"SELECT lease_ms FROM {schema}.leases WHERE key = $1", key));
        Assert.True(await Db.ScalarAsync<bool>(pg.ConnectionString,
            $"SELECT holder_started = (SELECT backend_start FROM pg_stat_activity WHERE pid = holder_pid) FROM {schema}.leases WHERE key = $1", key));

        await using var connection = new NpgsqlConnection(Unpooled);
        await connection.OpenAsync();
        await using (var tx = await connection.BeginTransactionAsync())
        {
            await FencingGuard.AssertEpochAsync(tx, "job", epoch, cluster.Namespace, schema);
            await using var show = new NpgsqlCommand("SELECT current_setting('idle_in_transaction_session_timeout')", connection, tx);
            Assert.Equal("3s", await show.ExecuteScalarAsync());
            await tx.CommitAsync();
        }

        await using (var show = new NpgsqlCommand("SELECT current_setting('idle_in_transaction_session_timeout')", connection))
        {
            Assert.Equal("0", await show.ExecuteScalarAsync()); // transaction-local: gone with the transaction
        }

        await using (var tx = await connection.BeginTransactionAsync())
        {
            await Assert.ThrowsAsync<StaleEpochException>(() => FencingGuard.AssertEpochAsync(tx, "job", 41, cluster.Namespace, schema));
        }
    }

    [Fact]
    public async Task A_node_role_that_does_not_own_first_version_objects_is_refused_with_what_to_run_until_the_DBA_upgrades_them()
    {
        // A DBA created the first version ahead and granted the node role only what the README listed: the node cannot
        // upgrade (ALTER TABLE needs the owner), so it is refused, no child runs, and the error says what to run; once
        // the DBA ran the current DDL, the node leads without a restart.
        var schema = NewSchema();
        var nodeRole = schema + "_node";
        var password = Guid.NewGuid().ToString("N");
        await Db.ScalarAsync<object>(pg.ConnectionString, FirstVersionDdl(schema));
        await Db.ScalarAsync<object>(pg.ConnectionString, $"""
            CREATE ROLE {nodeRole} LOGIN PASSWORD '{password}';
            GRANT USAGE ON SCHEMA {schema} TO {nodeRole};
            GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.leases TO {nodeRole};
            """);
        try
        {
            await using var cluster = new TestCluster(pg.ConnectionString);
            var connectionString = new NpgsqlConnectionStringBuilder(pg.ConnectionString) { Username = nodeRole, Password = password }.ConnectionString;
            var node = await cluster.StartNodeAsync("owner-less", connectionString: connectionString, configure: Fenced(schema));
            var refused = await cluster.Logs.WaitAsync(e => e.Node == "owner-less" && e.EventId.Id == HighlanderEventIds.Refused);
            Assert.Contains($"fencing objects in schema {schema} are missing or of an older version", refused.Message);
            Assert.Contains("as their owner", refused.Message);
            Assert.Equal(0, cluster.Recorder.Count);

            await Db.ScalarAsync<object>(pg.ConnectionString, FencingSql.Ddl(schema));
            var leading = await node.WaitForStateAsync("job", SingletonState.Leading);
            Assert.NotNull(leading.FencingEpoch);
        }
        finally
        {
            await Db.ScalarAsync<object>(pg.ConnectionString, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", nodeRole);
            await Db.ScalarAsync<object>(pg.ConnectionString, $"DROP OWNED BY {nodeRole}; DROP ROLE {nodeRole};");
        }
    }

    [Fact]
    public async Task An_upgrade_waiting_behind_a_long_guarded_transaction_gives_up_soon_instead_of_holding_up_other_writers()
    {
        // An old-version writer (no idle bound) keeps a guarded transaction open: the first new node's ALTER TABLE must
        // not wait behind it for good, since every other guarded transaction would queue behind the ALTER.
        var schema = NewSchema();
        await using var cluster = new TestCluster(pg.ConnectionString);
        var key = SingletonKey.Derive(cluster.Namespace, "job");
        await Db.ScalarAsync<object>(pg.ConnectionString, FirstVersionDdl(schema));
        await Db.ScalarAsync<object>(pg.ConnectionString, $"INSERT INTO {schema}.leases VALUES ($1, $2, 'job', 7, 'old', NULL, NULL, 1, now())", key, cluster.Namespace);
        await using var longConnection = new NpgsqlConnection(Unpooled);
        await longConnection.OpenAsync();
        var longTx = await longConnection.BeginTransactionAsync();
        await FencingGuard.AssertEpochAsync(longTx, "job", 7, cluster.Namespace, schema);

        var node = await cluster.StartNodeAsync("upgrader", configure: Fenced(schema));
        var failed = await cluster.Logs.WaitAsync(e => e.Node == "upgrader" && e.EventId.Id == HighlanderEventIds.ConnectFailed);
        Assert.Equal(PostgresErrorCodes.LockNotAvailable, Assert.IsType<PostgresException>(failed.Exception).SqlState);

        // Another old-version writer still gets through while the node keeps trying.
        await using (var other = new NpgsqlConnection(Unpooled))
        {
            await other.OpenAsync();
            await using var tx = await other.BeginTransactionAsync();
            await FencingGuard.AssertEpochAsync(tx, "job", 7, cluster.Namespace, schema);
            await tx.CommitAsync();
        }

        Assert.Equal(0, cluster.Recorder.Count);
        await longTx.CommitAsync();
        var leading = await node.WaitForStateAsync("job", SingletonState.Leading);
        Assert.Equal(8, leading.FencingEpoch);
        Assert.Equal(FencingSql.GuardVersion, await Db.ScalarAsync<string>(pg.ConnectionString, $"SELECT obj_description('{schema}.assert_epoch(text,bigint,text)'::regprocedure, 'pg_proc')"));
    }

    /// <summary>The DDL of the first version, as shipped before the holder-session check and the idle bound.</summary>
    private static string FirstVersionDdl(string schema) => $$"""
        CREATE SCHEMA IF NOT EXISTS {{schema}};
        CREATE TABLE IF NOT EXISTS {{schema}}.leases (
            key          bigint      PRIMARY KEY,
            namespace    text        NOT NULL,
            name         text        NOT NULL,
            epoch        bigint      NOT NULL CHECK (epoch > 0),
            node_id      text        NOT NULL,
            endpoint     text,
            host         text,
            holder_pid   integer     NOT NULL,
            acquired_at  timestamptz NOT NULL,
            UNIQUE (namespace, name)
        );
        CREATE OR REPLACE FUNCTION {{schema}}.assert_epoch(p_name text, p_epoch bigint, p_namespace text DEFAULT 'highlander')
        RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
        DECLARE
            current_epoch bigint;
        BEGIN
            SELECT l.epoch INTO current_epoch FROM {{schema}}.leases l
             WHERE l.namespace = p_namespace AND l.name = p_name FOR SHARE;
            IF current_epoch IS NULL OR current_epoch <> p_epoch THEN
                RAISE EXCEPTION 'stale fencing epoch % for singleton "%" (namespace "%"): the current epoch is %',
                    p_epoch, p_name, p_namespace, coalesce(current_epoch::text, 'none')
                    USING ERRCODE = 'HL001',
                          HINT = 'Another node has taken over this singleton: abandon this transaction.';
            END IF;
            RETURN current_epoch;
        END
        $fn$;
        REVOKE EXECUTE ON FUNCTION {{schema}}.assert_epoch(text, bigint, text) FROM PUBLIC;
        """;

    private static Task<TestNode> StartRecordingNodeAsync(TestCluster cluster, string id, string schema, Starts starts) =>
        cluster.StartNodeAsync(id, singletons: [], configure: Fenced(schema), services: s => s.AddClusterSingleton("job", async (leadership, _, ct) =>
        {
            starts.Add(leadership.NodeId, leadership.FencingEpoch!.Value);
            await Task.Delay(Timeout.Infinite, ct);
        }));

    private static async Task Execute(NpgsqlConnection connection, NpgsqlTransaction tx, string sql)
    {
        await using var cmd = new NpgsqlCommand(sql, connection, tx);
        await cmd.ExecuteNonQueryAsync();
    }

    /// <summary>Polls a server-side condition that raises no event (who holds a lock), bounded.</summary>
    private static async Task<bool> PollAsync(Func<Task<bool>> condition)
    {
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (DateTime.UtcNow < until)
        {
            if (await condition())
            {
                return true;
            }

            await Task.Delay(20);
        }

        return false;
    }

    /// <summary>Every child start (node, epoch), awaitable.</summary>
    private sealed class Starts
    {
        private readonly List<(string Node, long Epoch)> _all = [];
        private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public IReadOnlyList<(string Node, long Epoch)> All
        {
            get
            {
                lock (_all)
                {
                    return [.. _all];
                }
            }
        }

        public void Add(string node, long epoch)
        {
            TaskCompletionSource changed;
            lock (_all)
            {
                _all.Add((node, epoch));
                changed = _changed;
                _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
            }

            changed.TrySetResult();
        }

        public async Task<(string Node, long Epoch)> WaitAsync(Func<(string Node, long Epoch), bool> match)
        {
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
            while (true)
            {
                Task changed;
                lock (_all)
                {
                    foreach (var s in _all)
                    {
                        if (match(s))
                        {
                            return s;
                        }
                    }

                    changed = _changed.Task;
                }

                try
                {
                    await changed.WaitAsync(cts.Token);
                }
                catch (OperationCanceledException)
                {
                    throw new TimeoutException("no matching child start; starts: " + string.Join(", ", All.Select(s => $"{s.Node}@{s.Epoch}")));
                }
            }
        }
    }
}
