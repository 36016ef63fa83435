using HighlanderPG.Leasing;
using HighlanderPG.Tests.Infrastructure;
using Npgsql;

namespace HighlanderPG.Tests.Leasing;

/// <summary>Releases are announced in batches: one notification per 300 keys, not one per key.</summary>
[Collection(SharedServer.Name)]
public sealed class ReleaseAnnouncementTests(PostgresFixture pg)
{
    [Fact]
    public void An_announcement_is_read_in_both_forms()
    {
        Assert.Equal([42L], LockProtocol.ParseAnnouncement("42"));
        Assert.Equal([1L, -2L, 3L], LockProtocol.ParseAnnouncement("1,-2,3"));
        Assert.Empty(LockProtocol.ParseAnnouncement("not-a-key"));
    }

    [Fact]
    public async Task A_node_stopping_with_many_singletons_announces_them_in_few_notifications_after_unlocking_them()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var names = Enumerable.Range(0, 400).Select(i => $"r{i:000}").ToArray();
        var node = await cluster.StartNodeAsync("many", names);
        foreach (var name in names)
        {
            await cluster.Recorder.WaitStartedAsync(name, node: "many");
        }

        var keys = names.Select(n => SingletonKey.Derive(cluster.Namespace, n)).ToHashSet();
        await using var listener = new NpgsqlConnection(pg.ConnectionString);
        await listener.OpenAsync();
        var announced = new List<long>();
        var notifications = 0;
        var stillHeld = 0L;
        var all = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        listener.Notification += (_, e) =>
        {
            var mine = LockProtocol.ParseAnnouncement(e.Payload).Where(keys.Contains).ToList();
            if (mine.Count == 0)
            {
                return; // another test's release
            }

            notifications++;
            announced.AddRange(mine);
            if (announced.Count >= keys.Count)
            {
                all.TrySetResult();
            }
        };
        await using (var listen = new NpgsqlCommand("LISTEN " + LockProtocol.Channel, listener))
        {
            await listen.ExecuteNonQueryAsync();
        }

        await node.StopAsync();
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        while (!all.Task.IsCompleted)
        {
            await listener.WaitAsync(cts.Token);
        }

        // Delivered after the unlocks: none of the announced keys is held by anyone any more.
        await using (var held = new NpgsqlCommand("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND ((classid::bigint << 32) | objid::bigint) = ANY($1)", listener))
        {
            held.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = [.. keys] });
            stillHeld = (long)(await held.ExecuteScalarAsync())!;
        }

        Assert.Equal(keys.Order(), announced.Order());
        Assert.InRange(notifications, 2, 400 / 2); // at most 300 keys each, and far fewer than one per key
        Assert.Equal(0, stillHeld);
    }
}
