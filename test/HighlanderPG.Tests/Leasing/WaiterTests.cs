using System.Diagnostics;
using HighlanderPG.Tests.Infrastructure;

namespace HighlanderPG.Tests.Leasing;

[Collection(SharedServer.Name)]
public sealed class WaiterTests(PostgresFixture pg)
{
    /// <summary>
    /// A blocked lock wait holds a snapshot (backend_xmin), which holds back VACUUM; the follower's wait is restarted
    /// every WaitSlice (the watch block's own deadline), so no snapshot of it lives long.
    /// </summary>
    [Fact]
    public async Task A_follower_waits_on_the_holder_in_bounded_slices()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        await cluster.StartNodeAsync("holder");
        await cluster.Recorder.WaitStartedAsync("job", node: "holder");
        var follower = await cluster.StartNodeAsync("waiter");
        await follower.WaitForLeaderAsync("job", "holder");

        var starts = new HashSet<DateTime>();
        var watch = Stopwatch.StartNew();
        while (starts.Count < 3)
        {
            Assert.True(watch.Elapsed < TimeSpan.FromSeconds(30), "the follower's wait was not seen restarting");
            var start = await Db.ScalarAsync<DateTime?>(pg.ConnectionString, """
                SELECT query_start FROM pg_stat_activity
                WHERE application_name = 'highlander-wait/waiter' AND state = 'active' AND wait_event_type = 'Lock'
                """);
            if (start is { } s)
            {
                starts.Add(s);
            }

            await Task.Delay(100);
        }

        // The wait is on the holder's lock, and the holder still runs: three waits, one after the other, each bounded.
        // (Without its deadline the first wait would last as long as the holder: no restart at all.)
        Assert.DoesNotContain(cluster.Recorder.Events, e => e.Node == "waiter");
        Assert.Equal(SingletonState.Following, follower.Singletons.Get("job")!.State);
    }
}
