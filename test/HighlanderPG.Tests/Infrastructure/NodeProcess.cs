using System.Diagnostics;

namespace HighlanderPG.Tests.Infrastructure;

/// <summary>
/// A HighlanderPG node as a separate OS process (test/HighlanderPG.TestNode, singleton "ticker"), reporting its
/// child's life into the test's recorder from the lines it prints.
/// </summary>
public sealed class NodeProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly TaskCompletionSource<int> _exited = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly System.Text.StringBuilder _output = new();

    private NodeProcess(string nodeId, Process process)
    {
        NodeId = nodeId;
        _process = process;
    }

    public string NodeId { get; }

    public Task<int> Exited => _exited.Task;

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

    public static NodeProcess Start(TestCluster cluster, string nodeId, string connectionString, bool ignoreCancellation = false, string? starveThreadPoolWhenFileExists = null)
    {
        var dll = Path.Combine(AppContext.BaseDirectory, "HighlanderPG.TestNode.dll");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = AppContext.BaseDirectory };
        psi.ArgumentList.Add(dll);
        var probe = new HighlanderOptions();
        TestCluster.TestTimings(probe);
        psi.Environment["Highlander__ConnectionString"] = connectionString;
        psi.Environment["Highlander__Namespace"] = cluster.Namespace;
        psi.Environment["Highlander__NodeId"] = nodeId;
        psi.Environment["Highlander__LeaseDuration"] = probe.LeaseDuration.ToString();
        psi.Environment["Highlander__HeartbeatInterval"] = probe.HeartbeatInterval.ToString();
        psi.Environment["Highlander__StopTimeout"] = probe.StopTimeout.ToString();
        psi.Environment["Highlander__SafetyMargin"] = probe.SafetyMargin.ToString();
        psi.Environment["Highlander__WaitSlice"] = probe.WaitSlice.ToString();
        psi.Environment["Highlander__ReconnectMinDelay"] = probe.ReconnectMinDelay.ToString();
        psi.Environment["Highlander__ReconnectMaxDelay"] = probe.ReconnectMaxDelay.ToString();
        psi.Environment["Highlander__LockDelayAfterServerStart"] = probe.LockDelayAfterServerStart.ToString();
        psi.Environment["TestNode__IgnoreCancellation"] = ignoreCancellation ? "true" : "false";
        if (starveThreadPoolWhenFileExists is not null)
        {
            psi.Environment["TestNode__StarveThreadPoolWhenFileExists"] = starveThreadPoolWhenFileExists;
        }

        psi.Environment["DOTNET_DbgEnableMiniDump"] = "0";

        var process = new Process { StartInfo = psi, EnableRaisingEvents = true };
        var node = new NodeProcess(nodeId, process);
        process.OutputDataReceived += (_, e) => node.OnLine(cluster.Recorder, e.Data);
        process.ErrorDataReceived += (_, e) => node.OnLine(null, e.Data);
        process.Exited += (_, _) =>
        {
            // Output lines may still be in flight; record the exit once both streams are drained.
            process.WaitForExit();
            cluster.Recorder.Record(nodeId, "ticker", LifeKind.Killed, $"process exited with {process.ExitCode}");
            node._exited.TrySetResult(process.ExitCode);
        };
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return node;
    }

    private void OnLine(LifeRecorder? recorder, string? line)
    {
        if (line is null)
        {
            return;
        }

        lock (_output)
        {
            _output.AppendLine(line);
        }

        if (recorder is null)
        {
            return;
        }

        if (line.StartsWith("STARTED ", StringComparison.Ordinal))
        {
            recorder.Record(NodeId, "ticker", LifeKind.Started, line);
        }
        else if (line.StartsWith("STOPPED ", StringComparison.Ordinal))
        {
            recorder.Record(NodeId, "ticker", LifeKind.Stopped, line);
        }
    }

    /// <summary>SIGKILL: the process and its child die at once; recorded before the signal is sent.</summary>
    public void Kill(LifeRecorder recorder)
    {
        recorder.Record(NodeId, "ticker", LifeKind.Killed, "SIGKILL sent");
        _process.Kill(entireProcessTree: true);
    }

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
