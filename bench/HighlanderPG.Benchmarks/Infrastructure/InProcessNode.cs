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
