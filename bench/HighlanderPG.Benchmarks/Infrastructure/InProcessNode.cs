using System.Diagnostics;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace HighlanderPG.Benchmarks.Infrastructure;

/// <summary>
/// A HighlanderPG node in the benchmark's own process (its own host, hence its own two sessions), with one singleton
/// whose child records when it starts and stops on the shared <see cref="Stopwatch"/> clock.
/// </summary>
internal sealed class InProcessNode : IAsyncDisposable
{
    private readonly TaskCompletionSource<long> _childStarted = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly List<long> _childStops = [];
    private IHost? _host;
    private int _escalations;
    private int _stopped;

    private InProcessNode(string nodeId) => NodeId = nodeId;

    public string NodeId { get; }

    public IClusterSingletons Singletons { get; private set; } = null!;

    private readonly TaskCompletionSource _rehearsed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>
    /// Ends once the node's own take-over rehearsal (<c>HighlanderOptions.RehearseTakeOver</c>, on by default) has run or
    /// failed, as seen in its log (events 1105, 1106): the cases fault a node only after it, as on a node that has run a
    /// while (a hand-over within that first moment competes with the rehearsal).
    /// </summary>
    public Task Rehearsed => _rehearsed.Task;

    /// <summary>When this node's child first started running (entry of the child's delegate).</summary>
    public Task<long> ChildStarted => _childStarted.Task;

    /// <summary>When this node's child first returned after it was told to stop, if it did.</summary>
    public long? FirstChildStop
    {
        get
        {
            lock (_childStops)
            {
                return _childStops.Count > 0 ? _childStops[0] : null;
            }
        }
    }

    /// <summary>How many times a child could not be stopped in time (should stay 0: the child stops at once).</summary>
    public int Escalations => Volatile.Read(ref _escalations);

    public static async Task<InProcessNode> StartAsync(
        string connectionString, string @namespace, string nodeId, string singletonName, Action<HighlanderOptions>? tune, bool verbose, CancellationToken cancellationToken)
    {
        var node = new InProcessNode(nodeId);
        var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        if (verbose)
        {
            builder.Logging.AddConsole(o => o.LogToStandardErrorThreshold = LogLevel.Trace).SetMinimumLevel(LogLevel.Information);
        }

        builder.Logging.AddProvider(new RehearsalWatch(node._rehearsed));
        builder.Logging.AddFilter<RehearsalWatch>("HighlanderPG.Rehearsal", LogLevel.Debug);
        builder.Logging.AddFilter<RehearsalWatch>("HighlanderPG", LogLevel.Warning);
        builder.Services.AddHighlander(o =>
        {
            o.ConnectionString = connectionString;
            o.Namespace = @namespace;
            o.NodeId = nodeId;

            // The default escalation ends the process: that would end the benchmark and lose its results. Count it
            // instead (the child below stops at once, so this is not expected to happen; the report says if it did).
            o.OnEscalation = _ =>
            {
                Interlocked.Increment(ref node._escalations);
                return ValueTask.CompletedTask;
            };
            tune?.Invoke(o);
        });
        builder.Services.AddClusterSingleton(singletonName, async (_, _, stoppingToken) =>
        {
            node._childStarted.TrySetResult(Stopwatch.GetTimestamp());
            try
            {
                await Task.Delay(Timeout.Infinite, stoppingToken);
            }
            catch (OperationCanceledException)
            {
                // Told to stop: return at once.
            }
            finally
            {
                lock (node._childStops)
                {
                    node._childStops.Add(Stopwatch.GetTimestamp());
                }
            }
        });

        var host = builder.Build();
        if (!host.Services.GetRequiredService<Microsoft.Extensions.Options.IOptions<HighlanderOptions>>().Value.RehearseTakeOver)
        {
            node._rehearsed.TrySetResult(); // nothing to wait for
        }

        node._host = host;
        node.Singletons = host.Services.GetRequiredService<IClusterSingletons>();
        RoundTripRecorder.CurrentNode.Value = nodeId; // local to this start: flows into the node's session, not back to the caller
        await host.StartAsync(cancellationToken);
        return node;
    }

    public async Task StopAsync()
    {
        if (_host is null || Interlocked.Exchange(ref _stopped, 1) == 1)
        {
            return;
        }

        await _host.StopAsync(CancellationToken.None);
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync();
        _host?.Dispose();
    }
}

/// <summary>A logger provider that only watches for the rehearsal's outcome (events 1105 and 1106).</summary>
internal sealed class RehearsalWatch(TaskCompletionSource rehearsed) : ILoggerProvider
{
    public ILogger CreateLogger(string categoryName) => new Watch(rehearsed);

    public void Dispose()
    {
    }

    private sealed class Watch(TaskCompletionSource rehearsed) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (eventId.Id is HighlanderPG.Diagnostics.HighlanderEventIds.Rehearsed or HighlanderPG.Diagnostics.HighlanderEventIds.RehearsalFailed)
            {
                rehearsed.TrySetResult();
            }
        }
    }
}
