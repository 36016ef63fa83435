using HighlanderPG.Diagnostics;
using HighlanderPG.Fencing;
using HighlanderPG.Messaging;
using HighlanderPG.Testing;
using HighlanderPG.Tests.Infrastructure;
using Npgsql;
using Xunit.Abstractions;

namespace HighlanderPG.Tests.Messaging;

/// <summary>
/// A stream of messages while the leader suffers faults the project injects elsewhere: its process SIGKILLed, its
/// process paused (SIGSTOP) past the lease. Each time the other node takes over and, in the end, every
/// message was acknowledged once: its effect row (written in the acknowledging transaction, with the epoch) exists
/// exactly once, and no effect of the old epoch was committed after the new leader's first effect.
/// </summary>
[Collection(SharedServer.Name)]
public sealed class MessagingFaultTests(PostgresFixture pg, ITestOutputHelper output)
{
    /// <summary>Effects the first leader commits before the fault, and the next one after it, before the stream stops.</summary>
    private const int Warm = 20;

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
    private static async Task AssertRedeliveredAsync(MessagingRig rig, List<long> inHand, long newEpoch)
    {
        var redelivered = await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Effects} WHERE message_id = ANY($1) AND epoch = $2 AND delivery >= 2", inHand.ToArray(), newEpoch);
        if (redelivered != inHand.Count)
        {
            // What happened to them instead (a CI run once found none redelivered; not reproduced since): their effects and rows.
            var effects = await rig.ListAsync<string>($"SELECT format('effect of %s: epoch %s, node %s, delivery %s, seq %s', message_id, epoch, node, delivery, seq) FROM {rig.Effects} WHERE message_id = ANY($1) OR delivery > 1 ORDER BY seq", inHand.ToArray());
            var rows = await rig.ListAsync<string>($"SELECT format('message %s: %s, deliveries %s, taken by epoch %s, finished by epoch %s', id, state, deliveries, taken_epoch, finished_epoch) FROM {rig.Schema}.messages WHERE id = ANY($1)", inHand.ToArray());
            Assert.Fail($"{inHand.Count} message(s) in the old leader's hands, {redelivered} processed by epoch {newEpoch} on a later delivery:\n" + string.Join("\n", effects.Concat(rows)));
        }
    }

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
}
