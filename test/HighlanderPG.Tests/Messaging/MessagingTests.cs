using HighlanderPG.Fencing;
using HighlanderPG.Messaging;
using HighlanderPG.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;

namespace HighlanderPG.Tests.Messaging;

/// <summary>Durable messages and calls to a singleton, against a real PostgreSQL (docs/messaging.md).</summary>
[Collection(SharedServer.Name)]
public sealed class MessagingTests(PostgresFixture pg)
{
    [Fact]
    public async Task Messages_are_delivered_in_order_and_each_effect_commits_with_its_ack()
    {
        await using var rig = new MessagingRig(pg.ConnectionString);
        var failedOnce = 0;
        var a = await rig.StartNodeAsync("a", (inbox, leadership, ct) => inbox.ProcessAsync(async (m, tx, t) =>
        {
            await MessagingRig.WriteEffectAsync(rig.Effects, m, leadership, tx, t);
            // Message 7 fails once after writing its effect: the effect must roll back with the transaction.
            if (m.GetPayload<Item>().N == 7 && Interlocked.Exchange(ref failedOnce, 1) == 0)
            {
                throw new InvalidOperationException("the first delivery of 7 fails");
            }
        }, ct));
        await rig.CreateEffectsAsync();
        await a.WaitForStateAsync(MessagingRig.Singleton, SingletonState.Leading);

        var ids = new List<long>();
        for (var n = 1; n <= 20; n++)
        {
            ids.Add(await rig.Client.SendAsync(MessagingRig.Singleton, new Item(n)));
        }

        await MessagingRig.EventuallyAsync(async () => await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Effects}") == 20, "20 effects");
        Assert.Equal(Enumerable.Range(1, 20).ToList(), await rig.ListAsync<int>($"SELECT n FROM {rig.Effects} ORDER BY seq"));
        Assert.Equal(2, await rig.ScalarAsync<int>($"SELECT delivery FROM {rig.Effects} WHERE n = 7"));
        Assert.Equal(20L, await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Schema}.messages WHERE id = ANY($1) AND state = 'done'", ids.ToArray()));
        Assert.Contains("the first delivery of 7 fails", await rig.ScalarAsync<string>($"SELECT last_error FROM {rig.Schema}.messages WHERE id = $1", ids[6]));
    }

    [Fact]
    public async Task A_stale_leaders_ack_is_refused_and_the_message_goes_to_the_next_leader()
    {
        await using var rig = new MessagingRig(pg.ConnectionString);
        await rig.CreateEffectsAsync();
        var staleAck = new TaskCompletionSource<Exception?>(TaskCreationOptions.RunContinuationsAsynchronously);
        var taken = new TaskCompletionSource<InboxMessage>(TaskCreationOptions.RunContinuationsAsynchronously);

        // A takes the message, then (once its leadership is lost) tries to acknowledge it with its effect.
        var a = await rig.StartNodeAsync("a", async (inbox, leadership, ct) =>
        {
            var m = await inbox.ReceiveAsync(ct);
            taken.TrySetResult(m);
            try
            {
                await Task.Delay(Timeout.Infinite, leadership.LostToken);
            }
            catch (OperationCanceledException)
            {
            }

            await using var connection = new NpgsqlConnection(rig.ConnectionString);
            await connection.OpenAsync(CancellationToken.None);
            await using var tx = await connection.BeginTransactionAsync(CancellationToken.None);
            try
            {
                await MessagingRig.WriteEffectAsync(rig.Effects, m, leadership, tx, CancellationToken.None);
                await inbox.AckAsync(m, tx, CancellationToken.None);
                await tx.CommitAsync(CancellationToken.None);
                staleAck.TrySetResult(null);
            }
            catch (Exception ex)
            {
                staleAck.TrySetResult(ex);
            }
        });
        await a.WaitForStateAsync(MessagingRig.Singleton, SingletonState.Leading);
        var b = await rig.StartNodeAsync("b", rig.EffectChild());
        await b.WaitForLeaderAsync(MessagingRig.Singleton, "a");

        var id = await rig.Client.SendAsync(MessagingRig.Singleton, new Item(1));
        Assert.Equal(id, (await taken.Task.WaitAsync(TimeSpan.FromSeconds(60))).Id);

        // The lock session of A ends (an admin's pg_terminate_backend): B takes over; A's ack comes too late.
        var holder = (await Db.HolderPidAsync(pg.ConnectionString, rig.Key))!.Value;
        await Db.TerminateAsync(pg.ConnectionString, holder);

        var refused = await staleAck.Task.WaitAsync(TimeSpan.FromSeconds(60));
        Assert.IsType<StaleEpochException>(refused);
        await MessagingRig.EventuallyAsync(async () => await rig.StateAsync(id) == "done", "B acknowledged the message");
        Assert.Equal(1L, await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Effects}"));
        Assert.Equal("b", await rig.ScalarAsync<string>($"SELECT node FROM {rig.Effects}"));
        Assert.Equal(2, await rig.ScalarAsync<int>($"SELECT delivery FROM {rig.Effects}"));
    }

    [Fact]
    public async Task A_message_taken_but_not_acknowledged_is_redelivered_after_a_graceful_hand_over()
    {
        await using var rig = new MessagingRig(pg.ConnectionString);
        await rig.CreateEffectsAsync();
        var taken = new TaskCompletionSource<InboxMessage>(TaskCreationOptions.RunContinuationsAsynchronously);
        var a = await rig.StartNodeAsync("a", async (inbox, _, ct) =>
        {
            taken.TrySetResult(await inbox.ReceiveAsync(ct));
            await Task.Delay(Timeout.Infinite, ct);
        });
        await a.WaitForStateAsync(MessagingRig.Singleton, SingletonState.Leading);
        var b = await rig.StartNodeAsync("b", rig.EffectChild());
        await b.WaitForLeaderAsync(MessagingRig.Singleton, "a");

        var first = await rig.Client.SendAsync(MessagingRig.Singleton, new Item(1));
        var second = await rig.Client.SendAsync(MessagingRig.Singleton, new Item(2));
        Assert.Equal(first, (await taken.Task.WaitAsync(TimeSpan.FromSeconds(60))).Id);
        await a.Singletons.StepDownAsync(MessagingRig.Singleton);

        await MessagingRig.EventuallyAsync(async () => await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Effects}") == 2, "B processed both");
        Assert.Equal([1, 2], await rig.ListAsync<int>($"SELECT n FROM {rig.Effects} ORDER BY seq"));
        Assert.Equal([2, 1], await rig.ListAsync<int>($"SELECT delivery FROM {rig.Effects} ORDER BY seq"));
        Assert.Equal("done", await rig.StateAsync(second));
    }

    [Fact]
    public async Task Messages_sent_while_nobody_leads_wait_for_the_next_leader()
    {
        await using var rig = new MessagingRig(pg.ConnectionString);
        await rig.CreateEffectsAsync();
        await rig.RegisterWithoutLeaderAsync();
        for (var n = 1; n <= 5; n++)
        {
            await rig.Client.SendAsync(MessagingRig.Singleton, new Item(n));
        }

        // From SQL too, as any language would (psql: SELECT highlander.send('highlander', 'inbox', '{"n": 6}')).
        await rig.ExecAsync($"SELECT {rig.Schema}.send($1, $2, '{{\"n\": 6}}'::jsonb)", rig.Cluster.Namespace, MessagingRig.Singleton);

        await rig.StartNodeAsync("b", rig.EffectChild());
        await MessagingRig.EventuallyAsync(async () => await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Effects}") == 6, "the new leader processed all six");
        Assert.Equal([1, 2, 3, 4, 5, 6], await rig.ListAsync<int>($"SELECT n FROM {rig.Effects} ORDER BY seq"));
    }

    [Fact]
    public async Task A_call_gets_its_reply_and_a_call_nobody_takes_times_out_expired()
    {
        await using var rig = new MessagingRig(pg.ConnectionString);
        await rig.CreateEffectsAsync();
        await rig.RegisterWithoutLeaderAsync();

        // Nobody leads: the call times out, is marked expired, and is never processed later.
        var timedOut = await Assert.ThrowsAsync<TimeoutException>(() => rig.Client.CallAsync<Question, Answer>(MessagingRig.Singleton, new Question(1), TimeSpan.FromMilliseconds(300)));
        Assert.Contains("expired", timedOut.Message);
        Assert.Equal(1L, await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Schema}.messages WHERE state = 'expired' AND reply_channel IS NOT NULL"));

        var node = await rig.StartNodeAsync("a", (inbox, leadership, ct) => inbox.ProcessAsync(async (m, tx, t) =>
        {
            var q = m.GetPayload<Question>();
            await MessagingRig.WriteEffectAsync(rig.Effects, m, leadership, tx, t, q.X);
            await inbox.ReplyAsync(m, new Answer(q.X * 2, leadership.NodeId), tx, t);
        }, ct), configure: o => o.NodeId = "a");
        await node.WaitForStateAsync(MessagingRig.Singleton, SingletonState.Leading);

        // The caller is not a node: its own client, on another data source.
        var answer = await rig.Client.CallAsync<Question, Answer>(MessagingRig.Singleton, new Question(21), TimeSpan.FromSeconds(30));
        Assert.Equal(new Answer(42, "a"), answer);

        // The node's own client (registered in DI) calls too.
        var nodeClient = node.Host.Services.GetRequiredService<SingletonClient>();
        Assert.Equal(new Answer(8, "a"), await nodeClient.CallAsync<Question, Answer>(MessagingRig.Singleton, new Question(4), TimeSpan.FromSeconds(30)));

        Assert.Equal([21, 4], await rig.ListAsync<int>($"SELECT n FROM {rig.Effects} ORDER BY seq"));

        // The node's inbox wake-ups and its own client's replies share one LISTEN connection.
        Assert.Equal(1L, await rig.ScalarAsync<long>("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'highlander-msg/a' AND query LIKE 'LISTEN%'"));
    }

    [Fact]
    public async Task A_cancelled_call_is_not_processed_and_the_handler_sees_a_calls_deadline()
    {
        await using var rig = new MessagingRig(pg.ConnectionString);
        await rig.RegisterWithoutLeaderAsync();
        using var cts = new CancellationTokenSource();
        var call = rig.Client.CallAsync<Question, Answer>(MessagingRig.Singleton, new Question(1), TimeSpan.FromMinutes(5), cts.Token);
        await MessagingRig.EventuallyAsync(async () => await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Schema}.messages") == 1, "the call was stored");
        await cts.CancelAsync();
        var cancelled = await Assert.ThrowsAnyAsync<OperationCanceledException>(() => call);
        Assert.Contains("cancelled by its token before any leader took it", cancelled.Message);
        Assert.Equal(cts.Token, cancelled.CancellationToken);
        Assert.Equal("expired", await rig.ScalarAsync<string>($"SELECT state FROM {rig.Schema}.messages"));

        // A call whose handler outlives its deadline: the handler's token fires; the caller gets a timeout.
        var handlerCancelled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var node = await rig.StartNodeAsync("a", (inbox, _, ct) => inbox.ProcessAsync(async (m, tx, t) =>
        {
            try
            {
                await Task.Delay(Timeout.Infinite, t);
            }
            finally
            {
                handlerCancelled.TrySetResult();
            }
        }, ct));
        await node.WaitForStateAsync(MessagingRig.Singleton, SingletonState.Leading);
        var slow = await Assert.ThrowsAsync<TimeoutException>(() => rig.Client.CallAsync<Question, Answer>(MessagingRig.Singleton, new Question(2), TimeSpan.FromSeconds(2)));
        Assert.Contains("took it", slow.Message);
        await handlerCancelled.Task.WaitAsync(TimeSpan.FromSeconds(60));
    }

    [Fact]
    public async Task A_call_to_an_unreachable_database_fails_with_the_connections_error_not_a_timeout()
    {
        // As a send does: at once, with Npgsql's own error, not a TaskCanceledException at the end of the call's timeout.
        await using var client = new SingletonClient(new SingletonClientOptions { ConnectionString = "Host=127.0.0.1;Port=1;Username=u;Timeout=2" });
        var sent = await Assert.ThrowsAnyAsync<NpgsqlException>(() => client.SendAsync(MessagingRig.Singleton, new Question(1)));
        var called = await Assert.ThrowsAnyAsync<NpgsqlException>(() => client.CallAsync<Question, Answer>(MessagingRig.Singleton, new Question(1), TimeSpan.FromMinutes(5)));
        Assert.Equal(sent.GetType(), called.GetType());
    }

    [Fact]
    public async Task Queue_full_ttl_and_dead_letters()
    {
        await using var rig = new MessagingRig(pg.ConnectionString);
        await rig.CreateEffectsAsync();
        await rig.RegisterWithoutLeaderAsync(o =>
        {
            o.MaxPending = 4;
            o.MaxDeliveries = 3;
        });

        // Nobody leads. A message with a 1 ms time-to-live expires before any leader can take it.
        var shortLived = await rig.Client.SendAsync(MessagingRig.Singleton, new Item(1), timeToLive: TimeSpan.FromMilliseconds(1));
        var poison = await rig.Client.SendAsync(MessagingRig.Singleton, new Item(2));
        await rig.Client.SendAsync(MessagingRig.Singleton, new Item(3));
        await rig.Client.SendAsync(MessagingRig.Singleton, new Item(4));
        var full = await Assert.ThrowsAsync<MessagingException>(() => rig.Client.SendAsync(MessagingRig.Singleton, new Item(5)));
        Assert.Equal(MessagingError.QueueFull, full.Error);
        Assert.Contains("full", full.Message);

        var cured = 0;
        var node = await rig.StartNodeAsync("a", (inbox, leadership, ct) => inbox.ProcessAsync(async (m, tx, t) =>
        {
            if (m.GetPayload<Item>().N == 2 && Volatile.Read(ref cured) == 0)
            {
                throw new InvalidOperationException("poison");
            }

            await MessagingRig.WriteEffectAsync(rig.Effects, m, leadership, tx, t);
        }, ct), o =>
        {
            o.MaxPending = 4;
            o.MaxDeliveries = 3;
        });

        await MessagingRig.EventuallyAsync(async () => await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Effects}") == 2, "3 and 4 processed");
        Assert.Equal([3, 4], await rig.ListAsync<int>($"SELECT n FROM {rig.Effects} ORDER BY seq"));
        Assert.Equal("expired", await rig.StateAsync(shortLived));
        Assert.Equal("dead", await rig.StateAsync(poison));
        Assert.Equal(3, await rig.ScalarAsync<int>($"SELECT deliveries FROM {rig.Schema}.messages WHERE id = $1", poison));
        Assert.Contains("poison", await rig.ScalarAsync<string>($"SELECT last_error FROM {rig.Schema}.messages WHERE id = $1", poison));

        // Replayed from SQL once the cause is fixed: delivered again, processed.
        Volatile.Write(ref cured, 1);
        Assert.Equal(1, await rig.ScalarAsync<int>($"SELECT {rig.Schema}.replay_dead($1, $2)", rig.Cluster.Namespace, MessagingRig.Singleton));
        await MessagingRig.EventuallyAsync(async () => await rig.StateAsync(poison) == "done", "the replayed dead letter was processed");
        Assert.Equal([3, 4, 2], await rig.ListAsync<int>($"SELECT n FROM {rig.Effects} ORDER BY seq"));
        await node.StopAsync();
    }

    [Fact]
    public async Task Bad_input_gets_a_clear_error()
    {
        await using var rig = new MessagingRig(pg.ConnectionString);

        // No messaging tables yet in this schema.
        var notSetUp = await Assert.ThrowsAsync<MessagingException>(() => rig.Client.SendAsync("inbox", new Item(1)));
        Assert.Equal(MessagingError.NotSetUp, notSetUp.Error);

        await rig.RegisterWithoutLeaderAsync(o => o.MaxPayloadBytes = 100);

        var unknown = await Assert.ThrowsAsync<MessagingException>(() => rig.Client.SendAsync("no-such-singleton", new Item(1)));
        Assert.Equal(MessagingError.UnknownSingleton, unknown.Error);
        Assert.Contains("no-such-singleton", unknown.Message);
        Assert.Contains("no node has registered it", unknown.Message);

        var tooLarge = await Assert.ThrowsAsync<MessagingException>(() => rig.Client.SendAsync(MessagingRig.Singleton, new string('x', 200)));
        Assert.Equal(MessagingError.PayloadTooLarge, tooLarge.Error);
        Assert.Contains("limit is 100 bytes", tooLarge.Message);

        var refused = await Assert.ThrowsAsync<MessagingException>(() => rig.Client.SendAsync(MessagingRig.Singleton, typeof(string)));
        Assert.Equal(MessagingError.NotSerializable, refused.Error);
        Assert.Contains("System.Type", refused.Message);

        await Assert.ThrowsAsync<ArgumentException>(() => rig.Client.SendAsync(" ", new Item(1)));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => rig.Client.SendAsync(MessagingRig.Singleton, new Item(1), TimeSpan.Zero));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => rig.Client.CallAsync<Item, Item>(MessagingRig.Singleton, new Item(1), TimeSpan.Zero));

        // The same errors from SQL, with their SQLSTATE.
        var sqlUnknown = await Assert.ThrowsAsync<PostgresException>(() => rig.ExecAsync($"SELECT {rig.Schema}.send($1, 'nope', '1'::jsonb)", rig.Cluster.Namespace));
        Assert.Equal("HL010", sqlUnknown.SqlState);
        var sqlNull = await Assert.ThrowsAsync<PostgresException>(() => rig.ExecAsync($"SELECT {rig.Schema}.send($1, $2, NULL)", rig.Cluster.Namespace, MessagingRig.Singleton));
        Assert.Equal("HL013", sqlNull.SqlState);
        Assert.Equal(0L, await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Schema}.messages"));
    }

    [Fact]
    public async Task A_send_inside_the_senders_transaction_exists_only_if_it_commits_and_a_client_registers_in_DI()
    {
        await using var rig = new MessagingRig(pg.ConnectionString);
        await rig.RegisterWithoutLeaderAsync();

        // A process that is not a node: only the client, from DI.
        var services = new ServiceCollection();
        services.AddSingletonClient(o =>
        {
            o.ConnectionString = pg.ConnectionString;
            o.Namespace = rig.Cluster.Namespace;
            o.Schema = rig.Schema;
        });
        await using var provider = services.BuildServiceProvider();
        var client = provider.GetRequiredService<SingletonClient>();

        await using var connection = new NpgsqlConnection(pg.ConnectionString);
        await connection.OpenAsync();
        await using (var rolledBack = await connection.BeginTransactionAsync())
        {
            await client.SendAsync(rolledBack, MessagingRig.Singleton, new Item(1));
            await rolledBack.RollbackAsync();
        }

        long committedId;
        await using (var committed = await connection.BeginTransactionAsync())
        {
            committedId = await client.SendAsync(committed, MessagingRig.Singleton, new Item(2));
            Assert.Equal(0L, await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Schema}.messages"));
            await committed.CommitAsync();
        }

        Assert.Equal([committedId], await rig.ListAsync<long>($"SELECT id FROM {rig.Schema}.messages"));
    }

    [Fact]
    public async Task Acknowledged_messages_are_deleted_after_the_retention_and_dead_letters_are_kept()
    {
        await using var rig = new MessagingRig(pg.ConnectionString);
        await rig.CreateEffectsAsync();
        Action<HighlanderMessagingOptions> options = o =>
        {
            o.Retention = TimeSpan.Zero;
            o.MaxDeliveries = 1;
        };
        var a = await rig.StartNodeAsync("a", (inbox, leadership, ct) => inbox.ProcessAsync(async (m, tx, t) =>
        {
            if (m.GetPayload<Item>().N == 2)
            {
                throw new InvalidOperationException("dead on arrival");
            }

            await MessagingRig.WriteEffectAsync(rig.Effects, m, leadership, tx, t);
        }, ct), options);
        await a.WaitForStateAsync(MessagingRig.Singleton, SingletonState.Leading);
        for (var n = 1; n <= 3; n++)
        {
            await rig.Client.SendAsync(MessagingRig.Singleton, new Item(n));
        }

        await MessagingRig.EventuallyAsync(async () => await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Effects}") == 2, "1 and 3 processed");

        // The next leadership purges at its first receive: the acknowledged rows go, the dead letter stays.
        var b = await rig.StartNodeAsync("b", rig.EffectChild(), options);
        await b.WaitForLeaderAsync(MessagingRig.Singleton, "a");
        await a.Singletons.StepDownAsync(MessagingRig.Singleton);
        await MessagingRig.EventuallyAsync(async () => await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Schema}.messages WHERE state = 'done'") == 0, "the acknowledged messages were deleted");
        Assert.Equal(["dead"], await rig.ListAsync<string>($"SELECT state FROM {rig.Schema}.messages"));
    }

    [Fact]
    public async Task Messaging_without_fencing_fails_the_start_and_says_so()
    {
        await using var rig = new MessagingRig(pg.ConnectionString);
        var failed = await Assert.ThrowsAsync<InvalidOperationException>(() => rig.StartNodeAsync("a", (_, _, ct) => Task.Delay(Timeout.Infinite, ct), configure: o => o.Fencing = false));
        Assert.Contains("Fencing = true", failed.Message);
    }

    [Fact]
    public async Task Bad_messaging_options_fail_the_start_naming_each_option()
    {
        await using var rig = new MessagingRig(pg.ConnectionString);
        var failed = await Assert.ThrowsAsync<InvalidOperationException>(() => rig.StartNodeAsync("a", (_, _, ct) => Task.Delay(Timeout.Infinite, ct), o =>
        {
            o.MaxPending = 0;
            o.MaxDeliveries = -1;
            o.DefaultTimeToLive = TimeSpan.Zero;
        }));
        Assert.Contains("MaxPending must be positive (got 0)", failed.Message);
        Assert.Contains("MaxDeliveries must be positive (got -1)", failed.Message);
        Assert.Contains("DefaultTimeToLive must be positive", failed.Message);
    }
}
