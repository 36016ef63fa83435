using System.Diagnostics;
using HighlanderPG.Cli.Processes;
using HighlanderPG.Testing;

namespace HighlanderPG.Cli.Demo;

/// <summary>One node of the demo: a <c>highlander run</c> process of this same tool, connected through its own fault proxy.</summary>
internal sealed class DemoNode(string id, FaultProxy proxy, Func<DemoNode, LaunchSpec> spec, Action<DemoNode, string> onLine, string logPath)
{
    private readonly Lock _gate = new();
    private Process? _process;
    private Task _pumps = Task.CompletedTask;

    public string Id { get; } = id;

    public FaultProxy Proxy { get; } = proxy;

    public bool CutOff { get; set; }

    /// <summary>How many processes this node has had.</summary>
    public int Generation { get; private set; }

    /// <summary>What the demo did to the current process (so its exit is expected), if anything.</summary>
    public string? Fate { get; set; }

    public int? Pid
    {
        get
        {
            lock (_gate)
            {
                return _process is { HasExited: false } p ? p.Id : null;
            }
        }
    }

    public bool IsRunning => Pid is not null;

    public Process? Process
    {
        get
        {
            lock (_gate)
            {
                return _process;
            }
        }
    }

    public async Task StartAsync()
    {
        var process = await ProcessLauncher.Shared.StartAsync(spec(this)).ConfigureAwait(false);
        lock (_gate)
        {
            _process = process;
            Generation++;
            Fate = null;
        }

        _pumps = Task.WhenAll(PumpAsync(process.StandardOutput), PumpAsync(process.StandardError));

        // A node's process group is the node alone (it starts its own children in groups of their own): once it has
        // exited, the watchdog must forget it, or it would SIGKILL whatever group gets that id next.
        var group = process.Id;
        _ = process.WaitForExitAsync().ContinueWith(_ => ProcessLauncher.Shared.Forget(group), TaskScheduler.Default);
    }

    /// <summary>Signals the node process (not its group: the node stops its own child).</summary>
    public bool Signal(int signal) => Pid is { } pid && Native.SignalProcess(pid, signal);

    /// <summary>Waits for the current process to exit; its exit code, or <see langword="null"/> if it did not within <paramref name="timeout"/>.</summary>
    public async Task<int?> WaitForExitAsync(TimeSpan timeout)
    {
        var process = Process;
        if (process is null)
        {
            return null;
        }

        try
        {
            await process.WaitForExitAsync(CancellationToken.None).WaitAsync(timeout).ConfigureAwait(false);
            await _pumps.WaitAsync(TimeSpan.FromSeconds(2)).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            if (!process.HasExited)
            {
                return null;
            }
        }

        return process.ExitCode;
    }

    private async Task PumpAsync(StreamReader reader)
    {
        await using var log = new StreamWriter(new FileStream(logPath, FileMode.Append, FileAccess.Write, FileShare.ReadWrite)) { AutoFlush = true };
        while (await reader.ReadLineAsync().ConfigureAwait(false) is { } line)
        {
            await log.WriteLineAsync(line).ConfigureAwait(false);
            onLine(this, line);
        }
    }
}
