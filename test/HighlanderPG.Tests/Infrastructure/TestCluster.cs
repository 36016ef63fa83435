using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace HighlanderPG.Tests.Infrastructure;

/// <summary>Several HighlanderPG nodes in one test process: separate hosts, separate sessions, one child-life journal.</summary>
public sealed class TestCluster : IAsyncDisposable
{
    private readonly List<TestNode> _nodes = [];
    private readonly List<EscalationContext> _unexpectedEscalations = [];
    private readonly JournalDirectory _journal = new();

    public TestCluster(string connectionString)
    {
        ConnectionString = connectionString;
        Namespace = "test-" + Guid.NewGuid().ToString("N")[..12];
    }

    public string ConnectionString { get; }

    /// <summary>Each test has its own namespace, so tests sharing a server never contend for each other's keys.</summary>
    public string Namespace { get; }

    /// <summary>The children's lives, in order (the one journal; the recording child writes to it in-process).</summary>
    public LifeJournal Recorder => _journal.Journal;

    public ChildBehavior Behavior { get; } = new();

    public LogCapture Logs { get; } = new();

    /// <summary>Fast test timings that keep the lease's invariants (validated like any user's).</summary>
    public static void TestTimings(HighlanderOptions o)
    {
        o.LeaseDuration = TimeSpan.FromSeconds(3);
        o.HeartbeatInterval = TimeSpan.FromMilliseconds(500);
        o.StopTimeout = TimeSpan.FromSeconds(1);
        o.SafetyMargin = TimeSpan.FromMilliseconds(500);
        o.WaitSlice = TimeSpan.FromSeconds(1);
        o.ReconnectMinDelay = TimeSpan.FromMilliseconds(100);
        o.ReconnectMaxDelay = TimeSpan.FromSeconds(1);
        o.StepDownHoldOff = TimeSpan.FromSeconds(2);
        o.LockDelayAfterServerStart = TimeSpan.FromSeconds(3);
        o.SingletonDefaults.RestartDelay = TimeSpan.FromMilliseconds(200);
    }

    /// <summary>Starts a node running the recording child under each of <paramref name="singletons"/>.</summary>
    public async Task<TestNode> StartNodeAsync(
        string nodeId,
        string[]? singletons = null,
        Action<HighlanderOptions>? configure = null,
        Action<IServiceCollection>? services = null,
        string? connectionString = null,
        bool waitForStart = true)
    {
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Logging.ClearProviders();
        builder.Logging.SetMinimumLevel(LogLevel.Debug);
        builder.Logging.AddFilter("Npgsql", LogLevel.Warning);
        builder.Logging.AddProvider(Logs.For(nodeId));
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(30));
        builder.Services.AddSingleton(Recorder);
        builder.Services.AddSingleton(Behavior);
        builder.Services.AddHighlander(o =>
        {
            o.ConnectionString = connectionString ?? ConnectionString;
            o.Namespace = Namespace;
            o.NodeId = nodeId;
            TestTimings(o);

            // The default escalation ends the process: here that would abort the whole test run without saying which
            // test or why. A test that expects escalation sets its own handler; any other escalation fails its test.
            o.OnEscalation = ctx =>
            {
                lock (_unexpectedEscalations)
                {
                    _unexpectedEscalations.Add(ctx);
                }

                Recorder.Record(ctx.NodeId, ctx.Singleton, LifeKind.Escalated, "unexpected: " + ctx.Reason);
                return ValueTask.CompletedTask;
            };
            configure?.Invoke(o);
        });
        foreach (var name in singletons ?? ["job"])
        {
            builder.Services.AddClusterSingleton<RecordingService>(name);
        }

        services?.Invoke(builder.Services);
        var host = builder.Build();
        var node = new TestNode(nodeId, host);
        _nodes.Add(node);
        if (waitForStart)
        {
            await host.StartAsync();
        }

        return node;
    }

    private string DescribeLogs(IReadOnlySet<string> nodes)
    {
        var entries = Logs.Entries.Where(e => nodes.Contains(e.Node)).ToList();
        return string.Join("\n", entries.Select(e => $"  {e.At:HH:mm:ss.fff} {e.Node} {e.EventId.Id} {e.Level} {e.Message}"));
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            foreach (var node in _nodes)
            {
                await node.DisposeAsync();
            }
        }
        finally
        {
            _journal.Dispose();
        }

        lock (_unexpectedEscalations)
        {
            Assert.True(
                _unexpectedEscalations.Count == 0,
                "A child was escalated although the test did not expect it: " +
                string.Join("; ", _unexpectedEscalations.Select(e => $"{e.NodeId}/{e.Singleton}: {e.Reason} (remaining lease {e.RemainingLease})")) +
                "\n" + Recorder.Describe() + "\nLogs of those nodes:\n" + DescribeLogs(_unexpectedEscalations.Select(e => e.NodeId).ToHashSet()));
        }
    }
}

public sealed class TestNode(string nodeId, IHost host) : IAsyncDisposable
{
    private int _stopped;

    public string NodeId { get; } = nodeId;

    public IHost Host { get; } = host;

    public IClusterSingletons Singletons => Host.Services.GetRequiredService<IClusterSingletons>();

    /// <summary>
    /// Until the node's own take-over rehearsal (HighlanderOptions.RehearseTakeOver, on by default) has ended: it runs once
    /// the node leads or follows, with up to two extra connections for a moment. A test that counts sessions, locks or
    /// statements waits for it first.
    /// </summary>
    public Task RehearsedAsync(TimeSpan? timeout = null) =>
        Assert.IsType<HighlanderPG.Hosting.HighlanderNode>(Singletons).AutomaticRehearsal.WaitAsync(timeout ?? TimeSpan.FromSeconds(30));

    public async Task StopAsync()
    {
        if (Interlocked.Exchange(ref _stopped, 1) == 0)
        {
            await Host.StopAsync();
        }
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            await StopAsync();
        }
        finally
        {
            Host.Dispose();
        }
    }

    /// <summary>Waits until <paramref name="singleton"/> reaches <paramref name="state"/> on this node.</summary>
    public Task<SingletonStatus> WaitForStateAsync(string singleton, SingletonState state, TimeSpan? timeout = null) =>
        WaitForAsync(singleton, s => s.State == state, $"reach {state}", timeout);

    /// <summary>Waits until this node follows <paramref name="leader"/> for <paramref name="singleton"/>.</summary>
    public Task<SingletonStatus> WaitForLeaderAsync(string singleton, string leader, TimeSpan? timeout = null) =>
        WaitForAsync(singleton, s => s.State == SingletonState.Following && s.Leader?.NodeId == leader, $"follow {leader}", timeout);

    /// <summary>Waits until <paramref name="singleton"/>'s status on this node matches, woken by its state changes.</summary>
    public async Task<SingletonStatus> WaitForAsync(string singleton, Func<SingletonStatus, bool> match, string what, TimeSpan? timeout = null)
    {
        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(60));
        var watch = Singletons.WatchAsync(cts.Token).GetAsyncEnumerator(cts.Token);
        try
        {
            if (Singletons.Get(singleton) is { } now && match(now))
            {
                return now;
            }

            while (await watch.MoveNextAsync())
            {
                if (watch.Current.Name == singleton && Singletons.Get(singleton) is { } status && match(status))
                {
                    return status;
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
        finally
        {
            await watch.DisposeAsync();
        }

        throw new TimeoutException($"{singleton} on {NodeId} did not {what}; it is {Singletons.Get(singleton)}");
    }
}
