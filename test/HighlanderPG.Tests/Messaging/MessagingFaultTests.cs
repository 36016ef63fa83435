using HighlanderPG.Diagnostics;
using HighlanderPG.Fencing;
using HighlanderPG.Messaging;
using HighlanderPG.Testing;
using HighlanderPG.Tests.Infrastructure;
using Npgsql;
using Xunit.Abstractions;

namespace HighlanderPG.Tests.Messaging;

/// <summary>
/// A stream of messages while the leader suffers the faults the project injects elsewhere: its lock session cut off by
/// the fault proxy (blackholed, so the server's lease ends it) while its child keeps acknowledging, its process
/// SIGKILLed, its process paused (SIGSTOP) past the lease. Each time the other node takes over and, in the end, every
/// message was acknowledged once: its effect row (written in the acknowledging transaction, with the epoch) exists
/// exactly once, and no effect of the old epoch was committed after the new leader's first effect.
/// </summary>
[Collection(SharedServer.Name)]
public sealed class MessagingFaultTests(PostgresFixture pg, ITestOutputHelper output)
{
    /// <summary>Effects the first leader commits before the fault, and the next one after it, before the stream stops.</summary>
    private const int Warm = 20;

    [Fact]
    public async Task A_cut_off_leader_whose_child_keeps_acknowledging_is_refused_once_superseded_and_no_message_is_lost_or_doubled()
    {
        var server = new NpgsqlConnectionStringBuilder(pg.ConnectionString);
        await using var proxy = FaultProxy.Start(server.Host!, server.Port);

        // Only the node's own sessions (lock, wait) go through the proxy: its child's takes and acknowledgements go
        // straight to the server, so the child goes on working while its node is cut off.
        await using var direct = NpgsqlDataSource.Create(pg.ConnectionString);
        await using var rig = new MessagingRig(pg.ConnectionString);
        await rig.CreateEffectsAsync();
        var stubborn = new StubbornChild(rig, direct);
        var escalated = new TaskCompletionSource<EscalationContext>(TaskCreationOptions.RunContinuationsAsynchronously);
        var a = await rig.StartNodeAsync(
            "a",
            stubborn.RunAsync,
            o =>
            {
                o.MaxDeliveries = 10_000;
                o.DataSource = direct;
            },
            o =>
            {
                o.ConnectionString = proxy.ConnectionString(pg.ConnectionString);

                // The child lives on after its escalation, as a paused or runaway one would: only fencing protects its effects.
                o.OnEscalation = ctx =>
                {
                    escalated.TrySetResult(ctx);
                    return ValueTask.CompletedTask;
                };
            });
        var oldEpoch = (await a.WaitForStateAsync(MessagingRig.Singleton, SingletonState.Leading)).FencingEpoch!.Value;
        var b = await rig.StartNodeAsync("b", rig.EffectChild(), o => o.MaxDeliveries = 10_000);
        await b.WaitForLeaderAsync(MessagingRig.Singleton, "a");

        await using var stream = new MessageStream(rig);
        await EffectsOfEpochAsync(rig, oldEpoch, Warm);
        proxy.SetMode(ProxyMode.Blackhole);
        var newEpoch = (await b.WaitForAsync(
            MessagingRig.Singleton, s => s.State == SingletonState.Leading && s.FencingEpoch > oldEpoch, "lead after the cut-off leader")).FencingEpoch!.Value;
        await EffectsOfEpochAsync(rig, newEpoch, Warm);
        var attempts = await stubborn.Finished.WaitAsync(TimeSpan.FromSeconds(90));
        stream.AssertRunning();
        var ids = await stream.StopAsync();

        var summary = await AssertEachProcessedOnceAsync(rig, ids, oldEpoch, newEpoch);
        output.WriteLine(summary);
        output.WriteLine("the cut-off leader's attempts after it was told to stop: " + string.Join("; ", attempts.Select(x => x.ToString())));
        Assert.True(escalated.Task.IsCompleted, "the cut-off leader's child, which would not stop, was not escalated");

        // Every acknowledgement it tried once another node's epoch had replaced its own was refused, and there were some.
        var late = attempts.Where(x => x.Superseded).ToList();
        Assert.NotEmpty(late);
        Assert.All(late, x => Assert.True(x.Outcome == AckOutcome.StaleEpoch, $"a superseded leader's acknowledgement was not refused by the fencing guard: {x}"));
        proxy.SetMode(ProxyMode.Pass); // healed: a reconnects as a follower and stops promptly at the end of the test
    }

    [Fact]
    public async Task A_SIGKILLed_leader_process_is_replaced_and_the_messages_in_its_hands_are_redelivered_once()
    {
        await using var rig = new MessagingRig(pg.ConnectionString);
        await rig.CreateEffectsAsync();
        await using var a = StartNodeProcess(rig, "a");
        await a.WaitLoggedAsync(HighlanderEventIds.MessagingRegistered);
        await using var stream = new MessageStream(rig);
        await MessagingRig.EventuallyAsync(async () => await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Effects} WHERE node = 'a'") >= Warm, "the process a processed messages");
        var oldEpoch = await rig.ScalarAsync<long>($"SELECT max(epoch) FROM {rig.Effects} WHERE node = 'a'");
        var b = await rig.StartNodeAsync("b", rig.EffectChild(), o => o.MaxDeliveries = 10_000);
        await b.WaitForLeaderAsync(MessagingRig.Singleton, "a");

        var inHand = await WithMessageInHandAsync(rig, "a", oldEpoch, a.Kill);
        Assert.NotEqual(0, await a.Exited.WaitAsync(TimeSpan.FromSeconds(60)));
        var newEpoch = (await b.WaitForAsync(
            MessagingRig.Singleton, s => s.State == SingletonState.Leading && s.FencingEpoch > oldEpoch, "lead after the killed leader")).FencingEpoch!.Value;
        await EffectsOfEpochAsync(rig, newEpoch, Warm);
        stream.AssertRunning();
        var ids = await stream.StopAsync();

        output.WriteLine(await AssertEachProcessedOnceAsync(rig, ids, oldEpoch, newEpoch));
        await AssertRedeliveredAsync(rig, inHand, newEpoch);
    }

    [Fact]
    public async Task A_leader_process_paused_past_the_lease_escalates_on_waking_and_acknowledges_nothing_with_its_old_epoch()
    {
        await using var rig = new MessagingRig(pg.ConnectionString);
        await rig.CreateEffectsAsync();
        await using var a = StartNodeProcess(rig, "a");
        await a.WaitLoggedAsync(HighlanderEventIds.MessagingRegistered);
        await using var stream = new MessageStream(rig);
        await MessagingRig.EventuallyAsync(async () => await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Effects} WHERE node = 'a'") >= Warm, "the process a processed messages");
        var oldEpoch = await rig.ScalarAsync<long>($"SELECT max(epoch) FROM {rig.Effects} WHERE node = 'a'");
        var b = await rig.StartNodeAsync("b", rig.EffectChild(), o => o.MaxDeliveries = 10_000);
        await b.WaitForLeaderAsync(MessagingRig.Singleton, "a");

        // Frozen inside a message's transaction (its effect written, not yet acknowledged), for longer than the lease: the
        // server ends its lock session, b takes over and processes the stream.
        var inHand = await WithMessageInHandAsync(rig, "a", oldEpoch, a.Pause);
        var oldAcknowledged = await AcknowledgedByAsync(rig, oldEpoch); // frozen, it cannot commit anything more
        long newEpoch;
        try
        {
            newEpoch = (await b.WaitForAsync(
                MessagingRig.Singleton, s => s.State == SingletonState.Leading && s.FencingEpoch > oldEpoch, "lead after the paused leader")).FencingEpoch!.Value;
            await EffectsOfEpochAsync(rig, newEpoch, Warm);
        }
        finally
        {
            a.Resume();
        }

        // On waking, its lease guard finds the deadline passed and escalates at once: the default ends the process
        // (README, "Pauses and OnEscalation"). Its transaction in flight never commits.
        Assert.NotEqual(0, await a.Exited.WaitAsync(TimeSpan.FromSeconds(60)));
        Assert.True(a.Logged(HighlanderEventIds.Escalating), a.Output);
        Assert.Equal(oldAcknowledged, await AcknowledgedByAsync(rig, oldEpoch)); // nothing acknowledged with its old epoch once awake
        stream.AssertRunning();
        var ids = await stream.StopAsync();

        output.WriteLine(await AssertEachProcessedOnceAsync(rig, ids, oldEpoch, newEpoch));
        await AssertRedeliveredAsync(rig, inHand, newEpoch);
    }

    /// <summary>A node process (test/HighlanderPG.TestNode in its messaging mode) processing the rig's inbox into its effects table.</summary>
    private NodeProcess StartNodeProcess(MessagingRig rig, string nodeId) =>
        NodeProcess.Start(rig.Cluster, nodeId, pg.ConnectionString, environment: new Dictionary<string, string>
        {
            ["TestNode__Singleton"] = MessagingRig.Singleton,
            ["TestNode__Messaging"] = "true",
            ["TestNode__Effects"] = rig.Effects,
            ["Highlander__Fencing"] = "true",
            ["Highlander__FencingSchema"] = rig.Schema,
        });

    /// <summary>
    /// Does <paramref name="fault"/> to the leader <paramref name="node"/> while its child is inside a message's
    /// transaction: the test locks the effects table so that the child's effect waits, and does the fault once the
    /// child waits for it; then lets go. Returns the messages the leader had taken and not acknowledged then.
    /// </summary>
    private async Task<List<long>> WithMessageInHandAsync(MessagingRig rig, string node, long epoch, Action fault)
    {
        await using var blocker = new NpgsqlConnection(new NpgsqlConnectionStringBuilder(pg.ConnectionString) { Pooling = false }.ConnectionString);
        await blocker.OpenAsync();
        await using var block = await blocker.BeginTransactionAsync();
        await using (var cmd = new NpgsqlCommand($"LOCK TABLE {rig.Effects} IN SHARE MODE", blocker, block))
        {
            await cmd.ExecuteNonQueryAsync();
        }

        await MessagingRig.EventuallyAsync(
            async () => await rig.ScalarAsync<long>("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'", "highlander-msg/" + node) > 0,
            $"{node}'s child waits to write a message's effect");
        var inHand = await rig.ListAsync<long>($"SELECT id FROM {rig.Schema}.messages WHERE state = 'pending' AND taken_epoch = $1 ORDER BY id", epoch);
        Assert.NotEmpty(inHand);
        fault();
        await block.RollbackAsync();
        return inHand;
    }

    /// <summary>How many messages <paramref name="epoch"/> has acknowledged, and how many effects it has written.</summary>
    private static async Task<(long Acknowledged, long Effects)> AcknowledgedByAsync(MessagingRig rig, long epoch) =>
        (await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Schema}.messages WHERE finished_epoch = $1", epoch),
         await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Effects} WHERE epoch = $1", epoch));

    /// <summary>The messages the old leader had in its hands were processed by the new one, on a later delivery.</summary>
    private static async Task AssertRedeliveredAsync(MessagingRig rig, List<long> inHand, long newEpoch) =>
        Assert.Equal(
            inHand.Count,
            await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Effects} WHERE message_id = ANY($1) AND epoch = $2 AND delivery >= 2", inHand.ToArray(), newEpoch));

    private static Task EffectsOfEpochAsync(MessagingRig rig, long epoch, int count) =>
        MessagingRig.EventuallyAsync(
            async () => await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Effects} WHERE epoch = $1", epoch) >= count,
            $"the leader of epoch {epoch} processed {count} messages");

    /// <summary>The end check: every message sent was acknowledged, and its effect exists exactly once, in the right order of epochs.</summary>
    private static async Task<string> AssertEachProcessedOnceAsync(MessagingRig rig, long[] ids, long oldEpoch, long newEpoch)
    {
        await MessagingRig.EventuallyAsync(
            async () => await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Schema}.messages WHERE id = ANY($1) AND state = 'done'", ids) == ids.Length,
            $"all {ids.Length} messages acknowledged", TimeSpan.FromSeconds(120));
        var duplicates = await rig.ListAsync<long>($"SELECT message_id FROM {rig.Effects} GROUP BY message_id HAVING count(*) > 1 ORDER BY 1 LIMIT 20");
        Assert.Empty(duplicates);
        Assert.Equal(ids.Length, await rig.ScalarAsync<long>($"SELECT count(DISTINCT message_id) FROM {rig.Effects} WHERE message_id = ANY($1)", ids));
        Assert.Equal(ids.Length, await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Effects}"));
        Assert.Equal(0L, await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Schema}.messages WHERE state <> 'done'"));

        // Effect and acknowledgement committed together: the epoch that acknowledged a message is the one of its effect.
        Assert.Equal(0L, await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Schema}.messages m JOIN {rig.Effects} e ON e.message_id = m.id WHERE m.finished_epoch <> e.epoch"));

        // Nothing of the old epoch was written after the new leader's first effect (seq is taken at the insert, which comes
        // before the acknowledgement's guard in the same transaction).
        var firstNew = await rig.ScalarAsync<long>($"SELECT min(seq) FROM {rig.Effects} WHERE epoch = $1", newEpoch);
        var lateOld = await rig.ListAsync<long>($"SELECT message_id FROM {rig.Effects} WHERE epoch <= $1 AND seq > $2 ORDER BY seq LIMIT 20", oldEpoch, firstNew);
        Assert.True(lateOld.Count == 0, $"effects of epoch {oldEpoch} committed after the first effect of epoch {newEpoch}: messages {string.Join(", ", lateOld)}");

        var byOld = await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Effects} WHERE epoch = $1", oldEpoch);
        var byNew = await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Effects} WHERE epoch = $1", newEpoch);
        var redelivered = await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Effects} WHERE delivery > 1");
        return $"{ids.Length} messages, each processed once: {byOld} by epoch {oldEpoch}, {byNew} by epoch {newEpoch}, {redelivered} on a redelivery";
    }

    /// <summary>A sender that sends numbered messages to the rig's singleton until stopped, paced to some tens a second.</summary>
    private sealed class MessageStream : IAsyncDisposable
    {
        private readonly List<long> _sent = [];
        private readonly CancellationTokenSource _stop = new();
        private readonly Task _sender;

        public MessageStream(MessagingRig rig) =>
            _sender = Task.Run(async () =>
            {
                var n = 0;
                while (!_stop.IsCancellationRequested)
                {
                    var id = await rig.Client.SendAsync(MessagingRig.Singleton, new Item(++n));
                    lock (_sent)
                    {
                        _sent.Add(id);
                    }

                    await Task.Delay(10); // pacing, not synchronisation: a few hundred messages over a test
                }
            });

        public void AssertRunning() => Assert.False(_sender.IsCompleted, "the sender stopped: " + _sender.Exception);

        public async Task<long[]> StopAsync()
        {
            await _stop.CancelAsync();
            await _sender;
            lock (_sent)
            {
                return [.. _sent];
            }
        }

        public async ValueTask DisposeAsync()
        {
            await _stop.CancelAsync();
            await Task.WhenAny(_sender);
            _stop.Dispose();
        }
    }

    private enum AckOutcome
    {
        Committed,
        StaleEpoch,
        NotPending,
        TransactionFailed,
    }

    /// <summary>One acknowledgement the stubborn child tried; <see cref="Superseded"/>: it had seen another epoch replace its own first.</summary>
    private sealed record AckAttempt(long MessageId, bool Superseded, AckOutcome Outcome, string? Error)
    {
        public override string ToString() => $"message {MessageId} {(Superseded ? "after" : "before")} the new epoch: {Outcome}{(Error is null ? "" : " (" + Error + ")")}";
    }

    /// <summary>
    /// The cut-off leader's child: it keeps two messages taken ahead of the one it processes (so some are in its hands when
    /// it is cut off), and when its leadership is lost it does not stop: it acknowledges the first of those at once (racing
    /// the take-over), then waits until another node's epoch has replaced its own and tries to acknowledge the rest, a
    /// few times each, with its effects, in transactions of its own (to the server directly). Later incarnations (none are
    /// expected) process normally.
    /// </summary>
    private sealed class StubbornChild(MessagingRig rig, NpgsqlDataSource direct)
    {
        private readonly TaskCompletionSource<List<AckAttempt>> _finished = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly List<AckAttempt> _lost = [];
        private int _incarnations;

        /// <summary>The attempts it made once its leadership was lost, when it is done.</summary>
        public Task<List<AckAttempt>> Finished => _finished.Task;

        public Task RunAsync(ISingletonInbox inbox, ILeadership leadership, CancellationToken stopping) =>
            Interlocked.Increment(ref _incarnations) == 1 ? StubbornAsync(inbox, leadership) : rig.EffectChild()(inbox, leadership, stopping);

        private async Task StubbornAsync(ISingletonInbox inbox, ILeadership leadership)
        {
            try
            {
                var epoch = leadership.FencingEpoch!.Value;
                var held = new Queue<InboxMessage>();
                while (true)
                {
                    try
                    {
                        held.Enqueue(await inbox.ReceiveAsync(CancellationToken.None));
                    }
                    catch (Exception ex) when (ex is OperationCanceledException or StaleEpochException)
                    {
                        break; // the leadership is lost: the inbox gives no more; the child goes on regardless
                    }

                    while (held.Count > 2)
                    {
                        await AttemptAsync(inbox, leadership, held.Dequeue(), record: leadership.LostToken.IsCancellationRequested);
                    }
                }

                if (held.Count > 1)
                {
                    await AttemptAsync(inbox, leadership, held.Dequeue(), record: true);
                }

                using (var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60)))
                {
                    while (await CurrentEpochAsync(leadership) <= epoch)
                    {
                        await Task.Delay(25, timeout.Token);
                    }
                }

                foreach (var message in held)
                {
                    for (var i = 0; i < 3; i++)
                    {
                        await AttemptAsync(inbox, leadership, message, record: true);
                    }
                }

                _finished.TrySetResult(_lost);
            }
            catch (Exception ex)
            {
                _finished.TrySetException(ex);
            }
        }

        private async Task<long> CurrentEpochAsync(ILeadership leadership)
        {
            await using var cmd = direct.CreateCommand($"SELECT epoch FROM {rig.Schema}.leases WHERE namespace = $1 AND name = $2");
            cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = leadership.Namespace });
            cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = leadership.Name });
            return (long)(await cmd.ExecuteScalarAsync())!;
        }

        /// <summary>The message's effect and acknowledgement in one transaction, whatever the leadership's state.</summary>
        private async Task AttemptAsync(ISingletonInbox inbox, ILeadership leadership, InboxMessage message, bool record)
        {
            var superseded = await CurrentEpochAsync(leadership) > leadership.FencingEpoch!.Value;
            AckOutcome outcome;
            string? error = null;
            try
            {
                await using var connection = await direct.OpenConnectionAsync();
                await using var tx = await connection.BeginTransactionAsync();
                await MessagingRig.WriteEffectAsync(rig.Effects, message, leadership, tx, CancellationToken.None);
                await inbox.AckAsync(message, tx);
                await tx.CommitAsync();
                outcome = AckOutcome.Committed;
            }
            catch (StaleEpochException)
            {
                outcome = AckOutcome.StaleEpoch;
            }
            catch (MessagingException ex) when (ex.Error == MessagingError.NotPending)
            {
                outcome = AckOutcome.NotPending;
            }
            catch (NpgsqlException ex)
            {
                outcome = AckOutcome.TransactionFailed;
                error = ex.Message;
            }

            if (record || superseded || leadership.LostToken.IsCancellationRequested)
            {
                _lost.Add(new AckAttempt(message.Id, superseded, outcome, error));
            }
        }
    }
}
