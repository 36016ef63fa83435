using System.Diagnostics;
using System.Text;
using HighlanderPG.Cli.Processes;

namespace HighlanderPG.Cli.Tests.Infrastructure;

/// <summary>
/// The real, built <c>highlander</c> started as a process (<c>dotnet highlander.dll ...</c> from this test's output, where
/// the referenced CLI project is copied), its output captured. Disposing stops it: SIGTERM, then SIGKILL.
/// </summary>
public sealed class CliProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _stdout = new();
    private readonly StringBuilder _stderr = new();
    private readonly TaskCompletionSource _outputEnded = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly List<(StringBuilder Stream, string Text, TaskCompletionSource Seen)> _waiters = [];
    private int _openStreams = 2;

    private CliProcess(Process process)
    {
        _process = process;
    }

    public int Pid => _process.Id;

    public bool HasExited => _process.HasExited;

    public string Stdout
    {
        get
        {
            lock (_stdout)
            {
                return _stdout.ToString();
            }
        }
    }

    public string Stderr
    {
        get
        {
            lock (_stderr)
            {
                return _stderr.ToString();
            }
        }
    }

    public string Output => $"--- stdout ---\n{Stdout}\n--- stderr ---\n{Stderr}";

    /// <summary>The log lines on standard error with event id <paramref name="eventId"/> (a <c>HighlanderEventIds</c> constant).</summary>
    public IReadOnlyList<string> LogLines(int eventId) =>
        Stderr.Split('\n').Where(l => l.Contains($"[{eventId}]", StringComparison.Ordinal)).ToList();

    /// <summary>Whether <c>highlander</c> logged the event <paramref name="eventId"/>.</summary>
    public bool Logged(int eventId) => LogLines(eventId).Count > 0;

    /// <summary>Whether a <c>CommandExited</c> line gives <paramref name="exitCode"/> as the command's exit code (a word of its own: the pid is "(pid N)").</summary>
    public bool LoggedCommandExit(int exitCode) =>
        LogLines(HighlanderPG.Diagnostics.HighlanderEventIds.CommandExited).Any(l => l.Split(' ').Contains(exitCode.ToString(System.Globalization.CultureInfo.InvariantCulture)));

    /// <summary>Waits until <c>highlander</c> logs the event <paramref name="eventId"/> on standard error.</summary>
    public Task WaitLoggedAsync(int eventId, TimeSpan? timeout = null) => WaitForStderrAsync($"[{eventId}]", timeout);

    /// <summary>Starts <c>highlander</c> with <paramref name="args"/>; the environment has no HIGHLANDER_/PG* variables but those given.</summary>
    public static CliProcess Start(IEnumerable<string> args, IReadOnlyDictionary<string, string>? environment = null)
    {
        var dll = Path.Combine(AppContext.BaseDirectory, "highlander.dll");
        var startInfo = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host ? host : "dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        startInfo.ArgumentList.Add(dll);
        foreach (var arg in args)
        {
            startInfo.ArgumentList.Add(arg);
        }

        foreach (var name in startInfo.Environment.Keys.Where(k => k.StartsWith("PG", StringComparison.Ordinal) || k.StartsWith("HIGHLANDER_", StringComparison.Ordinal)).ToList())
        {
            startInfo.Environment.Remove(name);
        }

        foreach (var (name, value) in environment ?? new Dictionary<string, string>())
        {
            startInfo.Environment[name] = value;
        }

        var process = new Process { StartInfo = startInfo };
        var cli = new CliProcess(process);
        process.OutputDataReceived += (_, e) => cli.Append(cli._stdout, e.Data);
        process.ErrorDataReceived += (_, e) => cli.Append(cli._stderr, e.Data);
        process.Start();
        process.StandardInput.Close();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return cli;
    }

    /// <summary>Runs <c>highlander</c> to completion.</summary>
    public static async Task<(int ExitCode, CliProcess Process)> RunAsync(IEnumerable<string> args, IReadOnlyDictionary<string, string>? environment = null, TimeSpan? timeout = null)
    {
        var cli = Start(args, environment);
        var code = await cli.WaitForExitAsync(timeout ?? TimeSpan.FromSeconds(60));
        return (code, cli);
    }

    public async Task<int> WaitForExitAsync(TimeSpan timeout)
    {
        try
        {
            await _process.WaitForExitAsync().WaitAsync(timeout);
        }
        catch (TimeoutException)
        {
            throw new TimeoutException($"highlander (pid {Pid}) did not exit within {timeout}.\n{Output}");
        }

        _process.WaitForExit(); // drains the output handlers
        return _process.ExitCode;
    }

    /// <summary>Waits until standard error has a line containing <paramref name="text"/> (prefer <see cref="WaitLoggedAsync"/> for log events).</summary>
    public Task WaitForStderrAsync(string text, TimeSpan? timeout = null) => WaitForAsync(_stderr, "stderr", text, timeout);

    /// <summary>Waits until standard output has a line containing <paramref name="text"/>.</summary>
    public Task WaitForStdoutAsync(string text, TimeSpan? timeout = null) => WaitForAsync(_stdout, "stdout", text, timeout);

    private async Task WaitForAsync(StringBuilder stream, string streamName, string text, TimeSpan? timeout)
    {
        var limit = timeout ?? TimeSpan.FromSeconds(30);
        var seen = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_waiters)
        {
            if (Contains(stream, text))
            {
                return;
            }

            _waiters.Add((stream, text, seen));
        }

        // Seen, or the output ended without it (the process exited), or the limit passed.
        var ended = await Task.WhenAny(seen.Task, _outputEnded.Task).WaitAsync(limit).ContinueWith(t => t.IsCompletedSuccessfully ? t.Result : null, TaskScheduler.Default);
        if (ended == seen.Task || Contains(stream, text))
        {
            return;
        }

        throw ended is null
            ? new TimeoutException($"No '{text}' on highlander's {streamName} within {limit}.\n{Output}")
            : new InvalidOperationException($"highlander's output ended before '{text}' on its {streamName}.\n{Output}");
    }

    private static bool Contains(StringBuilder stream, string text)
    {
        lock (stream)
        {
            return stream.ToString().Contains(text, StringComparison.Ordinal);
        }
    }

    public void Signal(int signal) => Native.SignalProcess(Pid, signal);

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            Signal(Native.SigTerm);
            if (!_process.WaitForExit(TimeSpan.FromSeconds(15)))
            {
                _process.Kill();
                _process.WaitForExit();
            }
        }

        await Task.CompletedTask;
        _process.Dispose();
    }

    private void Append(StringBuilder builder, string? line)
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
            lock (builder)
            {
                builder.Append(line).Append('\n');
            }

            for (var i = _waiters.Count - 1; i >= 0; i--)
            {
                var (stream, text, seen) = _waiters[i];
                if (stream == builder && line.Contains(text, StringComparison.Ordinal))
                {
                    seen.TrySetResult();
                    _waiters.RemoveAt(i);
                }
            }
        }
    }
}
