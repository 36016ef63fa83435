using HighlanderPG.Hosting;
using HighlanderPG.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;

namespace HighlanderPG.Tests.Hosting;

/// <summary>
/// <see cref="HighlanderNode.StopRunnersInline"/> (set by <c>highlander run</c>, docs/cli.md, "Hand-over: where the time
/// goes"): a stop tells the children on the stopping thread, before its call returns; by default on the thread pool.
/// Either way the child stops before its lock is released.
/// </summary>
[Collection(SharedServer.Name)]
public sealed class InlineStopTests(PostgresFixture pg)
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_stop_tells_the_children_on_its_own_thread_only_when_asked_to_and_releases_after_they_stopped(bool inline)
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var id = "i-" + Guid.NewGuid().ToString("N")[..6];
        var running = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var toldOn = 0; // the managed thread id the child's token fired on
        var locksWhenStopped = -1L;
        var node = await cluster.StartNodeAsync(id, [], o => o.RehearseTakeOver = false, s => s.AddClusterSingleton("inline", async (_, _, ct) =>
        {
            using (ct.Register(() => Volatile.Write(ref toldOn, Environment.CurrentManagedThreadId)))
            {
                running.TrySetResult();
                await Task.Delay(System.Threading.Timeout.Infinite, ct).ContinueWith(_ => { }, TaskScheduler.Default);
            }

            locksWhenStopped = await AdvisoryLocksOfAsync(id); // still held while the child ends
        }));
        await running.Task.WaitAsync(Timeout);
        var highlander = Assert.IsType<HighlanderNode>(node.Singletons);
        highlander.StopRunnersInline = inline;

        var stopping = highlander.StopAsync(CancellationToken.None);
        var toldThen = Volatile.Read(ref toldOn);
        var thisThread = Environment.CurrentManagedThreadId;
        await stopping.WaitAsync(Timeout);

        if (inline)
        {
            Assert.Equal(thisThread, toldThen); // told before StopAsync returned, on the caller's thread
        }
        else
        {
            Assert.NotEqual(thisThread, toldThen); // not yet, or on a pool thread
            Assert.NotEqual(thisThread, Volatile.Read(ref toldOn));
            Assert.NotEqual(0, Volatile.Read(ref toldOn));
        }

        Assert.Equal(1, locksWhenStopped);
        Assert.Equal(SingletonState.Stopped, highlander.Get("inline")!.State);
        Assert.Equal(0, await AdvisoryLocksOfAsync(id));
    }

    private async Task<long> AdvisoryLocksOfAsync(string nodeId) => await Db.ScalarAsync<long>(pg.ConnectionString, """
        SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ExclusiveLock' AND a.application_name = $1
        """, "highlander/" + nodeId);
}
