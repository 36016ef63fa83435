using HighlanderPG.Leasing;
using HighlanderPG.Operations;
using HighlanderPG.Testing.Journal;
using HighlanderPG.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;

namespace HighlanderPG.Tests.Leasing;

/// <summary>
/// A node that stops releases its singletons in one batch: the releases of the children that have returned wait for
/// those still stopping, up to a limit, instead of going out one batch per child (each batch sets every follower racing).
/// </summary>
[Collection(SharedServer.Name)]
public sealed class ReleaseGatheringTests(PostgresFixture pg)
{
    private const int Quick = 30;

    [Fact]
    public async Task A_stopping_node_releases_nothing_while_a_sibling_still_stops_then_everything_at_once()
    {
        await using var rig = await Rig.StartAsync(pg.ConnectionString, gatherLimit: TimeSpan.FromMinutes(2));
        var stop = rig.Node.StopAsync();

        // Every quick child has returned, the slow one still runs: none of the locks is released, nothing announced.
        await rig.QuickStopped;
        Assert.Equal(Quick + 1, await rig.HeldAsync());
        Assert.Empty(rig.Announced);

        rig.LetSlowReturn();
        await rig.WaitAnnouncedAsync(Quick + 1);
        await stop;
        Assert.Equal(0, await rig.HeldAsync());
        Assert.Equal(rig.Keys.Order(), rig.Announced.Order());
        Assert.Single(rig.Batches); // one transaction: every key in the first announcement
    }

    [Fact]
    public async Task A_drained_node_releases_nothing_while_a_sibling_still_steps_down_then_everything_at_once()
    {
        await using var rig = await Rig.StartAsync(pg.ConnectionString, gatherLimit: TimeSpan.FromMinutes(2));
        await using var control = new ClusterControl(pg.ConnectionString, rig.Namespace);
        var drain = await control.DrainAsync(rig.Node.NodeId, TimeSpan.FromMinutes(10));
        Assert.Equal(rig.Keys.Order(), drain.Singletons.Select(s => s.Key).Order());

        await rig.QuickStopped;
        Assert.Equal(Quick + 1, await rig.HeldAsync());
        Assert.Empty(rig.Announced);

        rig.LetSlowReturn();
        await rig.WaitAnnouncedAsync(Quick + 1);
        Assert.Equal(0, await rig.HeldAsync());
        Assert.Equal(rig.Keys.Order(), rig.Announced.Order());
        Assert.Single(rig.Batches);
        await control.UndrainAsync(rig.Node.NodeId);
    }

    [Fact]
    public async Task A_child_still_stopping_at_the_gatherings_end_does_not_hold_back_the_others()
    {
        await using var rig = await Rig.StartAsync(pg.ConnectionString, gatherLimit: TimeSpan.FromMilliseconds(200));
        var stop = rig.Node.StopAsync();

        // The quick ones go at the end of the gathering while the slow child still runs, and its lock stays held.
        await rig.WaitAnnouncedAsync(Quick);
        Assert.False(rig.SlowReturned);
        Assert.Equal(1, await rig.HeldAsync());
        Assert.DoesNotContain(rig.SlowKey, rig.Announced);

        rig.LetSlowReturn();
        await rig.WaitAnnouncedAsync(Quick + 1);
        await stop;
        Assert.Equal(0, await rig.HeldAsync());
        Assert.Contains(rig.SlowKey, rig.Announced);
    }

    /// <summary>
    /// One node leading <see cref="Quick"/> recording children and one slow child that returns only when the test lets it
    /// (well within its stop timeout), and a connection listening to the release announcements.
    /// </summary>
    private sealed class Rig : IAsyncDisposable
    {
        private readonly TestCluster _cluster;
        private readonly NpgsqlConnection _listener;
        private readonly TaskCompletionSource _slowMayReturn = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly Lock _gate = new();
        private readonly List<long> _announced = [];
        private readonly List<int> _batches = [];
        private static readonly string[] QuickNames = [.. Enumerable.Range(0, Quick).Select(i => $"g{i:00}")];
        private TaskCompletionSource _announcement = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private int _slowReturned;
        private CancellationTokenSource? _listening;
        private Task? _listen;

        private Rig(TestCluster cluster, NpgsqlConnection listener)
        {
            _cluster = cluster;
            _listener = listener;
        }

        public TestNode Node { get; private set; } = null!;

        public string Namespace => _cluster.Namespace;

        public long SlowKey { get; private set; }

        public HashSet<long> Keys { get; private set; } = [];

        public bool SlowReturned => Volatile.Read(ref _slowReturned) == 1;

        /// <summary>Completes when every quick child has recorded its stop.</summary>
        public Task QuickStopped => Task.WhenAll(QuickNames.Select(n => _cluster.Recorder.WaitAsync(e => e.Singleton == n && e.Kind == LifeKind.Stopped, timeout: TimeSpan.FromSeconds(60))));

        public List<long> Announced
        {
            get
            {
                lock (_gate)
                {
                    return [.. _announced];
                }
            }
        }

        /// <summary>How many of this rig's keys each notification announced, in order.</summary>
        public List<int> Batches
        {
            get
            {
                lock (_gate)
                {
                    return [.. _batches];
                }
            }
        }

        public static async Task<Rig> StartAsync(string connectionString, TimeSpan gatherLimit)
        {
            var cluster = new TestCluster(connectionString);
            var listener = new NpgsqlConnection(connectionString);
            var slowKey = SingletonKey.Derive(cluster.Namespace, "slow");
            var rig = new Rig(cluster, listener)
            {
                SlowKey = slowKey,
                Keys = [.. QuickNames.Select(n => SingletonKey.Derive(cluster.Namespace, n)), slowKey],
            };
            var slowStarted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            rig.Node = await cluster.StartNodeAsync(
                "gatherer-" + Guid.NewGuid().ToString("N")[..8], // a drain holds a node id off in every namespace of the schema
                QuickNames,
                o =>
                {
                    o.ReleaseGatherLimit = gatherLimit;
                    o.LeaseDuration = TimeSpan.FromSeconds(10); // the slow child's stop lasts what the test's checks take, well within these
                    o.StopTimeout = TimeSpan.FromSeconds(8);
                    o.LockDelayAfterServerStart = o.LeaseDuration;
                },
                services => services.AddClusterSingleton("slow", async (_, _, stoppingToken) =>
                {
                    slowStarted.TrySetResult();
                    try
                    {
                        await Task.Delay(Timeout.Infinite, stoppingToken);
                    }
                    catch (OperationCanceledException)
                    {
                        await rig._slowMayReturn.Task; // told to stop: returns only when the test lets it
                    }
                    finally
                    {
                        Volatile.Write(ref rig._slowReturned, 1);
                    }
                }));
            foreach (var name in QuickNames)
            {
                await cluster.Recorder.WaitStartedAsync(name, node: rig.Node.NodeId);
            }

            await slowStarted.Task.WaitAsync(TimeSpan.FromSeconds(60));
            await rig.Node.RehearsedAsync(); // no rehearsal in flight (its private locks and releases) while a test acts
            await rig.ListenAsync();
            return rig;
        }

        public void LetSlowReturn() => _slowMayReturn.TrySetResult();

        public async Task<long> HeldAsync()
        {
            await using var connection = new NpgsqlConnection(_listener.ConnectionString);
            await connection.OpenAsync();
            await using var held = new NpgsqlCommand("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND ((classid::bigint << 32) | objid::bigint) = ANY($1)", connection);
            held.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = [.. Keys] });
            return (long)(await held.ExecuteScalarAsync())!;
        }

        /// <summary>Waits until <paramref name="count"/> of this rig's keys have been announced (each notification wakes it).</summary>
        public async Task WaitAnnouncedAsync(int count)
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
            while (true)
            {
                Task next;
                lock (_gate)
                {
                    if (_announced.Count >= count)
                    {
                        return;
                    }

                    next = _announcement.Task;
                }

                await next.WaitAsync(timeout.Token);
            }
        }

        private async Task ListenAsync()
        {
            await _listener.OpenAsync();
            _listener.Notification += (_, e) =>
            {
                var mine = LockProtocol.ParseAnnouncement(e.Payload).Where(Keys.Contains).ToList();
                if (mine.Count > 0)
                {
                    TaskCompletionSource announcement;
                    lock (_gate)
                    {
                        _announced.AddRange(mine);
                        _batches.Add(mine.Count);
                        announcement = _announcement;
                        _announcement = new(TaskCreationOptions.RunContinuationsAsynchronously);
                    }

                    announcement.TrySetResult();
                }
            };
            await using (var listen = new NpgsqlCommand("LISTEN " + LockProtocol.Channel, _listener))
            {
                await listen.ExecuteNonQueryAsync();
            }

            _listening = new CancellationTokenSource();
            _listen = Task.Run(async () =>
            {
                try
                {
                    while (true)
                    {
                        await _listener.WaitAsync(_listening.Token);
                    }
                }
                catch (OperationCanceledException)
                {
                }
            });
        }

        public async ValueTask DisposeAsync()
        {
            LetSlowReturn();
            if (_listening is not null)
            {
                await _listening.CancelAsync();
                await _listen!;
                _listening.Dispose();
            }

            await _listener.DisposeAsync();
            await _cluster.DisposeAsync();
        }
    }
}
