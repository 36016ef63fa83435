using System.Diagnostics;
using System.Text;

namespace HighlanderPG.Benchmarks.Infrastructure;

/// <summary>
/// A holder in its own OS process: this executable relaunched with the hidden <c>node</c> verb. It prints <c>READY</c>
/// once it holds the lock (or leads), and is then SIGKILLed by <see cref="Kill"/>. It also exits by itself when its
/// standard input closes, so that a benchmark that dies leaves no holder behind.
/// </summary>
internal sealed class NodeProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _exited = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly StringBuilder _output = new();

    private NodeProcess(Process process) => _process = process;

    public int Pid => _process.Id;

    /// <summary>Starts a holder node. <paramref name="arguments"/> follow <c>node</c> (e.g. <c>--kind raw --key 42</c>).</summary>
    public static NodeProcess Start(string connectionString, IReadOnlyList<string> arguments)
    {
        var path = Environment.ProcessPath ?? throw new InvalidOperationException("The benchmark's own executable path is unknown.");
        var startInfo = new ProcessStartInfo(path)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        if (string.Equals(Path.GetFileNameWithoutExtension(path), "dotnet", StringComparison.Ordinal))
        {
            // Run as `dotnet HighlanderPG.Benchmarks.dll`: relaunch the same way.
            startInfo.ArgumentList.Add(typeof(NodeProcess).Assembly.Location);
        }

        startInfo.ArgumentList.Add(NodeMode.Verb);
        foreach (var argument in arguments)
        {
            startInfo.ArgumentList.Add(argument);
        }

        // Through the environment, not the command line: a connection string may carry a password.
        startInfo.Environment[NodeMode.ConnectionVariable] = connectionString;
        startInfo.Environment["DOTNET_DbgEnableMiniDump"] = "0";

        var process = new Process { StartInfo = startInfo, EnableRaisingEvents = true };
        var node = new NodeProcess(process);
        process.OutputDataReceived += (_, e) => node.OnLine(e.Data, isOutput: true);
        process.ErrorDataReceived += (_, e) => node.OnLine(e.Data, isOutput: false);
        process.Exited += (_, _) => node._exited.TrySetResult();
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return node;
    }

    /// <summary>Waits for the node's READY line.</summary>
    public async Task WaitReadyAsync(TimeSpan timeout, CancellationToken cancellationToken)
    {
        var first = await Task.WhenAny(_ready.Task, _exited.Task, Task.Delay(timeout, cancellationToken));
        cancellationToken.ThrowIfCancellationRequested();
        if (first == _ready.Task)
        {
            return;
        }

        throw new InvalidOperationException(
            (first == _exited.Task ? "The holder node exited before it was ready" : $"The holder node was not ready within {timeout.TotalSeconds:0} s") +
            $"; its output:{Environment.NewLine}{Output}");
    }

    /// <summary>SIGKILL (on Linux, <see cref="Process.Kill()"/> sends SIGKILL).</summary>
    public void Kill() => _process.Kill();

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

    public async ValueTask DisposeAsync()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill();
            }
        }
        catch (InvalidOperationException)
        {
            // Already gone.
        }

        await _exited.Task.WaitAsync(TimeSpan.FromSeconds(30));
        _process.WaitForExit(); // drain the output handlers
        _process.Dispose();
    }

    private void OnLine(string? line, bool isOutput)
    {
        if (line is null)
        {
            return;
        }

        lock (_output)
        {
            _output.AppendLine(line);
        }

        if (isOutput && line == NodeMode.ReadyLine)
        {
            _ready.TrySetResult();
        }
    }
}
