using HighlanderPG.Testing;

namespace HighlanderPG.Tests.Messaging;

/// <summary>Messages across a restart of the database server (a throwaway server of the test's own).</summary>
public sealed class MessagingServerRestartTests
{
    [Fact]
    public async Task Messages_sent_around_a_server_restart_are_each_processed_once_by_the_leader_after_it()
    {
        await using var server = await LocalPostgresServer.StartAsync();
        await using var rig = new MessagingRig(server.ConnectionString);
        await rig.CreateEffectsAsync();
        var a = await rig.StartNodeAsync("a", rig.EffectChild());
        await a.WaitForStateAsync(MessagingRig.Singleton, SingletonState.Leading);
        for (var n = 1; n <= 3; n++)
        {
            await rig.Client.SendAsync(MessagingRig.Singleton, new Item(n));
        }

        await MessagingRig.EventuallyAsync(async () => await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Effects}") == 3, "the first three processed");

        await server.RestartAsync(ShutdownMode.Fast);

        // Right after the restart nobody leads (the lock-delay); these wait, and the node's LISTEN connection comes back.
        for (var n = 4; n <= 6; n++)
        {
            await rig.Client.SendAsync(MessagingRig.Singleton, new Item(n));
        }

        await MessagingRig.EventuallyAsync(async () => await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Effects}") == 6, "the three sent after the restart processed");
        Assert.Equal([1, 2, 3, 4, 5, 6], await rig.ListAsync<int>($"SELECT n FROM {rig.Effects} ORDER BY seq"));
        Assert.Equal(0L, await rig.ScalarAsync<long>($"SELECT count(*) FROM {rig.Schema}.messages WHERE state <> 'done'"));

        // A call after the restart: the client's reply connection came back too.
        var reply = await rig.Client.CallAsync<Item, Item>(MessagingRig.Singleton, new Item(7), TimeSpan.FromSeconds(30));
        Assert.Equal(new Item(7), reply);
    }
}
