using System.Diagnostics;
using HighlanderPG.TestKit.Processes;

namespace HighlanderPG.Tests.Infrastructure;

/// <summary>
/// A HighlanderPG node as a separate OS process (test/HighlanderPG.TestNode, singleton "ticker"), with the test timings.
/// Its child journals its own start and stop; the test journals what it does to the process (a SIGKILL) and its exit.
/// </summary>
public sealed class NodeProcess : IAsyncDisposable
{
    /// <summary>The singleton the test node runs.</summary>
    public const string Singleton = "ticker";

    private readonly Process _process;
    private readonly LifeJournal _journal;
    private readonly TaskCompletionSource<int> _exited = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _outputEnded = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly System.Text.StringBuilder _output = new();
    private readonly List<(string Text, TaskCompletionSource Seen)> _waiters = [];
    private int _openStreams = 2;

    private NodeProcess(string nodeId, Process process, LifeJournal journal)
    {
        NodeId = nodeId;
        _process = process;
        _journal = journal;
    }

    public string NodeId { get; }

    public Task<int> Exited => _exited.Task;

    /// <summary>Standard output (STARTED/STOPPED/STARVING) and standard error (every log line, with its [event id]), interleaved.</summary>
    public string Output
    {
        get
        {
            lock (_output)
            {
                return _output.ToString();
            }
        }
    }

    /// <summary>A node of <paramref name="cluster"/> (its namespace and journal) as a process.</summary>
    /// <remarks><paramref name="environment"/>: more variables for the node (set last, so they may override the above).</remarks>
    public static NodeProcess Start(TestCluster cluster, string nodeId, string connectionString, bool ignoreCancellation = false, string? starveThreadPoolWhenFileExists = null, IReadOnlyDictionary<string, string>? environment = null) =>
        Start(cluster.Recorder, cluster.Namespace, nodeId, connectionString, ignoreCancellation, starveThreadPoolWhenFileExists, environment);

    public static NodeProcess Start(LifeJournal journal, string @namespace, string nodeId, string connectionString, bool ignoreCancellation = false, string? starveThreadPoolWhenFileExists = null, IReadOnlyDictionary<string, string>? environment = null)
    {
        var dll = Path.Combine(AppContext.BaseDirectory, "HighlanderPG.TestNode.dll");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = AppContext.BaseDirectory };
        psi.ArgumentList.Add(dll);
        var probe = new HighlanderOptions();
        TestCluster.TestTimings(probe);
        psi.Environment["Highlander__ConnectionString"] = connectionString;
        psi.Environment["Highlander__Namespace"] = @namespace;
        psi.Environment["Highlander__NodeId"] = nodeId;
        psi.Environment["Highlander__LeaseDuration"] = probe.LeaseDuration.ToString();
        psi.Environment["Highlander__HeartbeatInterval"] = probe.HeartbeatInterval.ToString();
        psi.Environment["Highlander__StopTimeout"] = probe.StopTimeout.ToString();
        psi.Environment["Highlander__SafetyMargin"] = probe.SafetyMargin.ToString();
        psi.Environment["Highlander__WaitSlice"] = probe.WaitSlice.ToString();
        psi.Environment["Highlander__ReconnectMinDelay"] = probe.ReconnectMinDelay.ToString();
        psi.Environment["Highlander__ReconnectMaxDelay"] = probe.ReconnectMaxDelay.ToString();
        psi.Environment["Highlander__LockDelayAfterServerStart"] = probe.LockDelayAfterServerStart.ToString();
        psi.Environment["TestNode__Singleton"] = Singleton;
        psi.Environment["TestNode__Journal"] = journal.Path;
        psi.Environment["TestNode__IgnoreCancellation"] = ignoreCancellation ? "true" : "false";
        if (starveThreadPoolWhenFileExists is not null)
        {
            psi.Environment["TestNode__StarveThreadPoolWhenFileExists"] = starveThreadPoolWhenFileExists;
        }

        psi.Environment["DOTNET_DbgEnableMiniDump"] = "0";
        foreach (var (name, value) in environment ?? new Dictionary<string, string>())
        {
            psi.Environment[name] = value;
        }

        var process = new Process { StartInfo = psi, EnableRaisingEvents = true };
        var node = new NodeProcess(nodeId, process, journal);
        process.OutputDataReceived += (_, e) => node.OnLine(e.Data);
        process.ErrorDataReceived += (_, e) => node.OnLine(e.Data);
        process.Exited += (_, _) =>
        {
            // Output lines may still be in flight; journal the exit once both streams are drained. A clean exit (0) comes
            // after the child's own stop: only an unclean one ends a life the child could not journal.
            process.WaitForExit();
            if (process.ExitCode != 0)
            {
                journal.Record(nodeId, Singleton, LifeKind.Killed, $"process exited with {process.ExitCode}");
            }

            node._exited.TrySetResult(process.ExitCode);
        };
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return node;
    }

    private void OnLine(string? line)
    {
        if (line is null)
        {
            if (Interlocked.Decrement(ref _openStreams) == 0)
            {
                _outputEnded.TrySetResult();
            }

            return;
        }

        lock (_waiters)
        {
            lock (_output)
            {
                _output.AppendLine(line);
            }

            for (var i = _waiters.Count - 1; i >= 0; i--)
            {
                if (line.Contains(_waiters[i].Text, StringComparison.Ordinal))
                {
                    _waiters[i].Seen.TrySetResult();
                    _waiters.RemoveAt(i);
                }
            }
        }
    }

    /// <summary>Whether the node logged <paramref name="eventId"/> (its log lines carry <c>[event id]</c>).</summary>
    public bool Logged(int eventId) => Output.Contains($"[{eventId}]", StringComparison.Ordinal);

    /// <summary>Waits until the node logs <paramref name="eventId"/>; fails if its output ends first.</summary>
    public async Task WaitLoggedAsync(int eventId, TimeSpan? timeout = null)
    {
        var text = $"[{eventId}]";
        var seen = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_waiters)
        {
            if (Logged(eventId))
            {
                return;
            }

            _waiters.Add((text, seen));
        }

        var limit = timeout ?? TimeSpan.FromSeconds(60);
        var first = await Task.WhenAny(seen.Task, _outputEnded.Task).WaitAsync(limit).ContinueWith(t => t.IsCompletedSuccessfully ? t.Result : null, TaskScheduler.Default);
        if (first == seen.Task || Logged(eventId))
        {
            return;
        }

        throw first is null
            ? new TimeoutException($"Node {NodeId} did not log {text} within {limit}.\n{Output}")
            : new InvalidOperationException($"Node {NodeId}'s output ended before {text}.\n{Output}");
    }

    /// <summary>SIGTERM: the node stops gracefully (its host's shutdown).</summary>
    public void Terminate() => Signals.Send(_process.Id, Signals.Term);

    /// <summary>SIGKILL: the process and its child die at once; journaled before the signal is sent.</summary>
    public void Kill()
    {
        _journal.Record(NodeId, Singleton, LifeKind.Killed, "SIGKILL sent");
        _process.Kill(entireProcessTree: true);
    }

    /// <summary>SIGSTOP: the whole process is frozen (its lease guard too) until <see cref="Resume"/>.</summary>
    public void Pause() => Signals.Send(_process.Id, Signals.Stop);

    /// <summary>SIGCONT: a paused process runs again.</summary>
    public void Resume() => Signals.Send(_process.Id, Signals.Continue);

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
        }

        await _exited.Task.WaitAsync(TimeSpan.FromSeconds(30));
        _process.Dispose();
    }
}
