using System.Diagnostics;
using System.Globalization;

namespace HighlanderPG.Benchmarks.Infrastructure;

/// <summary>
/// A <c>node --kind scale</c> process and what it has reported: READY, and every child start and stop with the
/// node's own monotonic timestamp (see <see cref="NodeMode"/>).
/// </summary>
internal sealed class ScaleNode : IAsyncDisposable
{
    private readonly object _gate = new();
    private readonly Dictionary<string, long> _running = new(StringComparer.Ordinal);
    private readonly Dictionary<string, List<long>> _starts = new(StringComparer.Ordinal);
    private readonly TaskCompletionSource<long> _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private WatchedProcess _process = null!;
    private long _lastStop;
    private long _lastEvent;
    private int _stops;

    private ScaleNode(string nodeId) => NodeId = nodeId;

    public string NodeId { get; }

    public int Pid => _process.Pid;

    public WatchedProcess Process => _process;

    /// <summary>When READY arrived (its host has started).</summary>
    public Task<long> Ready => _ready.Task;

    /// <summary>Whether the node was killed or told to stop by the benchmark.</summary>
    public bool Faulted { get; set; }

    public int RunningCount
    {
        get
        {
            lock (_gate)
            {
                return _running.Count;
            }
        }
    }

    public static ScaleNode Start(string connectionString, string @namespace, string nodeId, int singletons, bool verbose, string? placement = null)
    {
        var node = new ScaleNode(nodeId);
        List<string> arguments = ["--kind", "scale", "--namespace", @namespace, "--node-id", nodeId, "--count", singletons.ToString(CultureInfo.InvariantCulture)];
        if (placement is not null)
        {
            arguments.AddRange(["--placement", placement]);
        }

        if (verbose)
        {
            arguments.Add("--verbose");
        }

        node._process = WatchedProcess.StartNode(connectionString, arguments, node.OnLine);
        return node;
    }

    public async Task WaitReadyAsync(TimeSpan timeout, CancellationToken cancellationToken)
    {
        var first = await Task.WhenAny(_ready.Task, _process.Exited, Task.Delay(timeout, cancellationToken));
        cancellationToken.ThrowIfCancellationRequested();
        if (first != _ready.Task)
        {
            throw new InvalidOperationException(
                (first == _process.Exited ? $"Node {NodeId} exited before it was ready" : $"Node {NodeId} was not ready within {timeout.TotalSeconds:0} s") +
                $"; its standard error:{Environment.NewLine}{_process.Errors}");
        }
    }

    /// <summary>The singletons whose child runs here now (name to start timestamp).</summary>
    public Dictionary<string, long> Running()
    {
        lock (_gate)
        {
            return new Dictionary<string, long>(_running, StringComparer.Ordinal);
        }
    }

    public bool IsRunning(string name)
    {
        lock (_gate)
        {
            return _running.ContainsKey(name);
        }
    }

    /// <summary>The first start of <paramref name="name"/>'s child here after <paramref name="after"/>, if any.</summary>
    public long? FirstStartAfter(string name, long after)
    {
        lock (_gate)
        {
            if (_starts.TryGetValue(name, out var starts))
            {
                foreach (var start in starts)
                {
                    if (start > after)
                    {
                        return start;
                    }
                }
            }

            return null;
        }
    }

    /// <summary>When the last child that returned here returned (0 if none has).</summary>
    public long LastStop
    {
        get
        {
            lock (_gate)
            {
                return _lastStop;
            }
        }
    }

    /// <summary>How many children returned here (each a hand-over while the node is not being stopped).</summary>
    public int Stops
    {
        get
        {
            lock (_gate)
            {
                return _stops;
            }
        }
    }

    /// <summary>When the last child started or returned here (0 if none has).</summary>
    public long LastEvent
    {
        get
        {
            lock (_gate)
            {
                return _lastEvent;
            }
        }
    }

    public ValueTask DisposeAsync() => _process.DisposeAsync();

    private void OnLine(string line, long arrived)
    {
        if (line == NodeMode.ReadyLine)
        {
            _ready.TrySetResult(arrived);
            return;
        }

        var parts = line.Split(' ');
        if (parts.Length != 3 || !long.TryParse(parts[2], NumberStyles.None, CultureInfo.InvariantCulture, out var timestamp))
        {
            return;
        }

        lock (_gate)
        {
            _lastEvent = Math.Max(_lastEvent, timestamp);
            if (parts[0] == "START")
            {
                _running[parts[1]] = timestamp;
                if (!_starts.TryGetValue(parts[1], out var starts))
                {
                    _starts[parts[1]] = starts = [];
                }

                starts.Add(timestamp);
            }
            else if (parts[0] == "STOP")
            {
                _running.Remove(parts[1]);
                _stops++;
                _lastStop = Math.Max(_lastStop, timestamp);
            }
        }
    }
}

/// <summary>Nodes of one namespace, all running the same singletons.</summary>
internal sealed class ScaleCluster(BenchContext context, string @namespace, int singletons, string nodePrefix, string? placement = null) : IAsyncDisposable
{
    private readonly List<ScaleNode> _all = [];
    private int _next;

    public string Namespace { get; } = @namespace;

    public int Singletons { get; } = singletons;

    /// <summary>Nodes started and not faulted by the benchmark.</summary>
    public IReadOnlyList<ScaleNode> Live => [.. _all.Where(n => !n.Faulted)];

    public ScaleNode StartNode() => StartNode(string.Create(CultureInfo.InvariantCulture, $"{nodePrefix}{_next++:D2}"));

    /// <summary>Starts a node with this id (again, after the benchmark stopped the one that had it).</summary>
    public ScaleNode StartNode(string nodeId)
    {
        var node = ScaleNode.Start(context.ConnectionString, Namespace, nodeId, Singletons, context.Settings.Verbose, placement);
        _all.Add(node);
        return node;
    }

    /// <summary>How many singletons run on some live node.</summary>
    public int RunningCount()
    {
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var node in Live)
        {
            names.UnionWith(node.Running().Keys);
        }

        return names.Count;
    }

    /// <summary>Waits until every singleton runs on some live node; returns the timestamp of the last one's start.</summary>
    public async Task<long> WaitAllRunningAsync(TimeSpan timeout, CancellationToken cancellationToken)
    {
        var until = Stopwatch.GetTimestamp() + (long)(timeout.TotalSeconds * Stopwatch.Frequency);
        while (true)
        {
            var earliest = new Dictionary<string, long>(StringComparer.Ordinal);
            foreach (var node in Live)
            {
                foreach (var (name, started) in node.Running())
                {
                    earliest[name] = earliest.TryGetValue(name, out var other) ? Math.Min(other, started) : started;
                }
            }

            if (earliest.Count >= Singletons)
            {
                return earliest.Values.Max();
            }

            if (Stopwatch.GetTimestamp() > until)
            {
                throw new TimeoutException($"{Namespace}: only {earliest.Count} of {Singletons} singletons ran after {timeout.TotalSeconds:0} s.");
            }

            foreach (var node in Live.Where(n => n.Process.HasExited))
            {
                throw new InvalidOperationException($"Node {node.NodeId} exited; its standard error:{Environment.NewLine}{node.Process.Errors}");
            }

            await Task.Delay(10, cancellationToken);
        }
    }

    /// <summary>
    /// Waits until every singleton of <paramref name="names"/> has started on a live node other than
    /// <paramref name="victim"/> after <paramref name="fault"/>; returns the take-over time of each (milliseconds from
    /// the fault), null for those still not running at the cap.
    /// </summary>
    public async Task<Dictionary<string, double?>> WaitTakenOverAsync(ScaleNode victim, IReadOnlyCollection<string> names, long fault, TimeSpan cap, CancellationToken cancellationToken)
    {
        var until = fault + (long)(cap.TotalSeconds * Stopwatch.Frequency);
        var others = _all.Where(n => n != victim).ToList();
        var result = new Dictionary<string, double?>(StringComparer.Ordinal);
        while (true)
        {
            foreach (var name in names)
            {
                if (result.ContainsKey(name))
                {
                    continue;
                }

                long? first = null;
                foreach (var node in others)
                {
                    if (node.FirstStartAfter(name, fault) is { } started && (first is null || started < first))
                    {
                        first = started;
                    }
                }

                if (first is { } f)
                {
                    result[name] = (f - fault) * 1000.0 / Stopwatch.Frequency;
                }
            }

            if (result.Count == names.Count)
            {
                return result;
            }

            if (Stopwatch.GetTimestamp() > until)
            {
                foreach (var name in names.Where(n => !result.ContainsKey(n)))
                {
                    result[name] = null;
                }

                return result;
            }

            await Task.Delay(10, cancellationToken);
        }
    }

    public async ValueTask DisposeAsync()
    {
        // Graceful first (SIGTERM), so that the server sees clean session ends; SIGKILL whatever is left.
        foreach (var node in _all.Where(n => !n.Process.HasExited))
        {
            node.Process.Terminate();
        }

        foreach (var node in _all)
        {
            try
            {
                await node.Process.Exited.WaitAsync(TimeSpan.FromSeconds(20));
            }
            catch (TimeoutException)
            {
            }

            await node.DisposeAsync();
        }
    }
}
