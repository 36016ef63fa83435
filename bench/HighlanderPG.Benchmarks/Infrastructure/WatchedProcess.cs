using System.Diagnostics;
using System.Text;

namespace HighlanderPG.Benchmarks.Infrastructure;

/// <summary>
/// A process whose standard output lines are handed, as they arrive, to a callback with the <see cref="Stopwatch"/>
/// timestamp of their arrival (the scale nodes, <c>highlander run</c>, and the direct start of a command). Standard
/// error is kept for error messages. Its standard input stays open: the benchmark's own nodes exit when it closes.
/// </summary>
internal sealed class WatchedProcess : IAsyncDisposable
{
    private const int MaxKeptOutput = 64 * 1024;

    private readonly Process _process;
    private readonly Action<string, long>? _onLine;
    private readonly TaskCompletionSource _exited = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly StringBuilder _errors = new();

    private WatchedProcess(Process process, Action<string, long>? onLine)
    {
        _process = process;
        _onLine = onLine;
    }

    public int Pid { get; private set; }

    /// <summary>When the process was started (<see cref="Stopwatch"/> timestamp, just before <see cref="Process.Start()"/>).</summary>
    public long StartedAt { get; private set; }

    public Task Exited => _exited.Task;

    /// <summary>When the benchmark learnt that the process had exited (<see cref="Stopwatch"/> timestamp), once it has.</summary>
    public long ExitedAt { get; private set; }

    public bool HasExited => _exited.Task.IsCompleted;

    /// <summary>The last 64 KiB of standard error, for error messages.</summary>
    public string Errors
    {
        get
        {
            lock (_errors)
            {
                return _errors.ToString();
            }
        }
    }

    public static WatchedProcess Start(string fileName, IEnumerable<string> arguments, IReadOnlyDictionary<string, string>? environment, Action<string, long>? onLine)
    {
        var startInfo = new ProcessStartInfo(fileName)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var argument in arguments)
        {
            startInfo.ArgumentList.Add(argument);
        }

        startInfo.Environment["DOTNET_DbgEnableMiniDump"] = "0";
        foreach (var (name, value) in environment ?? new Dictionary<string, string>())
        {
            startInfo.Environment[name] = value;
        }

        var process = new Process { StartInfo = startInfo, EnableRaisingEvents = true };
        var watched = new WatchedProcess(process, onLine);
        process.OutputDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                watched._onLine?.Invoke(e.Data, Stopwatch.GetTimestamp());
            }
        };
        process.ErrorDataReceived += (_, e) => watched.OnError(e.Data);
        process.Exited += (_, _) =>
        {
            watched.ExitedAt = Stopwatch.GetTimestamp();
            watched._exited.TrySetResult();
        };
        watched.StartedAt = Stopwatch.GetTimestamp();
        process.Start();
        watched.Pid = process.Id;
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return watched;
    }

    /// <summary>This executable relaunched with the hidden <c>node</c> verb (see <see cref="NodeProcess"/>).</summary>
    public static WatchedProcess StartNode(string connectionString, IReadOnlyList<string> arguments, Action<string, long>? onLine)
    {
        var path = Environment.ProcessPath ?? throw new InvalidOperationException("The benchmark's own executable path is unknown.");
        List<string> all = [];
        if (string.Equals(Path.GetFileNameWithoutExtension(path), "dotnet", StringComparison.Ordinal))
        {
            all.Add(typeof(WatchedProcess).Assembly.Location);
        }

        all.Add(NodeMode.Verb);
        all.AddRange(arguments);

        // Through the environment, not the command line: a connection string may carry a password.
        return Start(path, all, new Dictionary<string, string> { [NodeMode.ConnectionVariable] = connectionString }, onLine);
    }

    /// <summary>SIGKILL.</summary>
    public void Kill() => Signals.Send(Pid, Signals.SigKill);

    /// <summary>SIGTERM: a graceful stop.</summary>
    public void Terminate() => Signals.Send(Pid, Signals.SigTerm);

    public async Task WaitExitAsync(TimeSpan timeout)
    {
        try
        {
            await _exited.Task.WaitAsync(timeout);
        }
        catch (TimeoutException)
        {
            throw new TimeoutException($"Process {Pid} did not exit within {timeout.TotalSeconds:0} s; its standard error:{Environment.NewLine}{Errors}");
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (!HasExited)
        {
            Kill();
        }

        try
        {
            await _exited.Task.WaitAsync(TimeSpan.FromSeconds(30));
            _process.WaitForExit(5000); // drain the output handlers (bounded: a grandchild may hold the pipe)
        }
        catch (TimeoutException)
        {
            // Leave it; the report will say what failed.
        }

        _process.Dispose();
    }

    private void OnError(string? line)
    {
        if (line is null)
        {
            return;
        }

        lock (_errors)
        {
            _errors.AppendLine(line);
            if (_errors.Length > MaxKeptOutput)
            {
                _errors.Remove(0, _errors.Length - MaxKeptOutput);
            }
        }
    }
}
