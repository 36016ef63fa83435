using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using HighlanderPG.Diagnostics;
using HighlanderPG.Cli.Processes;
using Microsoft.Extensions.Logging;

namespace HighlanderPG.Cli.Running;

/// <summary>How one run of the command ended.</summary>
/// <param name="ExitCode">Its exit code (128 + signal number when a signal ended it).</param>
/// <param name="StoppedByUs">Whether highlander told it to stop (lease lost, step-down, shutdown) before it exited.</param>
internal sealed record CommandOutcome(int ExitCode, bool StoppedByUs);

/// <summary>The command exited on its own with a non-zero code: a failure, for the restart policy and intensity.</summary>
internal sealed class CommandFailedException(string command, int exitCode)
    : Exception($"{command} exited with code {exitCode.ToString(CultureInfo.InvariantCulture)}")
{
    public int ExitCode { get; } = exitCode;
}

/// <summary>
/// The cluster singleton's child under the CLI: runs the command as an OS process while this node leads.
/// </summary>
/// <remarks>
/// Told to stop (the token fires: lease being lost, step-down, shutdown), it sends SIGTERM to the command's process
/// group, then SIGKILL shortly before the library's stop timeout ends, and returns only once the command has exited
/// and nothing is left in its group: the library releases the lock after this returns, so nothing of the command may
/// still run then. When the command exits by itself, whatever it left in its group is stopped the same way.
/// </remarks>
internal sealed partial class CommandChild(IReadOnlyList<string> command, string program, ProcessLauncher launcher)
{
    /// <summary>The shell's code for a command that could not be executed.</summary>
    public const int CannotExecute = 126;

    private readonly Lock _gate = new();
    private Process? _current;
    private (string Shell, string Name, string NodeId, string? Namespace)? _prepareFor;
    private PreparedLaunch? _prepared;
    private bool _preparing;
    private Task _preparation = Task.CompletedTask;
    private bool _closed;

    /// <summary>Where to log (set once the host's logging is built).</summary>
    public ILogger Logger { get; set; } = Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance;

    /// <summary>Asked before each start; returning false skips the run (cron mode: run once, or gave up).</summary>
    public Func<bool>? BeforeStart { get; init; }

    /// <summary>Told how each run ended, before the delegate returns.</summary>
    public Action<CommandOutcome>? AfterExit { get; init; }

    /// <summary>
    /// A rehearsal's child (<see cref="RunHost"/>): it leaves the processes that left its group alone, since a rehearsal
    /// may run beside COMMAND, whose escaped processes are COMMAND's business, not the rehearsal's.
    /// </summary>
    public bool Rehearsal { get; init; }

    /// <summary>
    /// The command for logs: the program's file name, and its first argument's when that is a script file. Other arguments
    /// are not logged: they may carry secrets (a URL with a password, a token).
    /// </summary>
    private string Display
    {
        get
        {
            var text = Path.GetFileName(command[0]);
            if (command.Count > 1 && !command[1].StartsWith('-') && File.Exists(command[1]))
            {
                text += " " + Path.GetFileName(command[1]);
                return command.Count > 2 ? text + " …" : text;
            }

            return command.Count > 1 ? text + " …" : text;
        }
    }

    /// <summary>
    /// Set by the host: once it fires (the node is stopping), no launch is prepared ahead any more.
    /// </summary>
    public CancellationToken ShuttingDown { get; set; }

    /// <summary>
    /// From now on, keeps the next run's process started ahead (<see cref="ProcessLauncher.PrepareAsync"/>): a <c>sh</c> in
    /// the command's own session and group, with its environment, waiting on a FIFO to become the command, so that a
    /// take-over costs a write and one <c>exec</c> instead of starting <c>setpriv</c>, <c>setsid</c> and the command
    /// (docs/cli.md, "Hand-over: where the time goes"). Nothing of the command runs before that write.
    /// </summary>
    /// <param name="shell">The <c>sh</c> that waits.</param>
    /// <param name="name">The singleton's name (HIGHLANDER_NAME).</param>
    /// <param name="nodeId">This node's id (HIGHLANDER_NODE).</param>
    /// <param name="ns">The namespace (HIGHLANDER_NAMESPACE).</param>
    /// <param name="now">Whether to start it now (this node follows), or only once the current run has ended (it leads:
    /// an idle waiting process beside COMMAND would only be one more process to end if this node is killed).</param>
    public void PrepareAhead(string shell, string name, string nodeId, string? ns, bool now)
    {
        lock (_gate)
        {
            if (_prepareFor is not null)
            {
                return;
            }

            _prepareFor = (shell, name, nodeId, ns);
        }

        if (now)
        {
            StartPreparing();
        }
    }

    /// <summary>Prepares no more after the one ready or under way, which the next run still uses (a rehearsal's last round).</summary>
    public void PrepareNoMore()
    {
        lock (_gate)
        {
            _closed = true;
        }
    }

    /// <summary>Ends the process prepared ahead, if any, and prepares no more (the node is stopping).</summary>
    public void DiscardPrepared()
    {
        PreparedLaunch? prepared;
        lock (_gate)
        {
            _closed = true;
            prepared = _prepared;
            _prepared = null;
        }

        prepared?.Discard();
    }

    private void StartPreparing()
    {
        (string Shell, string Name, string NodeId, string? Namespace) context;
        lock (_gate)
        {
            if (_prepareFor is not { } target || _prepared is not null || _preparing || _closed || ShuttingDown.IsCancellationRequested)
            {
                return;
            }

            context = target;
            _preparing = true;
        }

        var preparation = PrepareCoreAsync(context);
        lock (_gate)
        {
            _preparation = preparation;
        }
    }

    /// <summary>Completes once the preparation under way, if any, has ended (ready, or failed: then the next run is started the ordinary way).</summary>
    public Task WhenPreparedAsync()
    {
        lock (_gate)
        {
            return _preparation;
        }
    }

    private async Task PrepareCoreAsync((string Shell, string Name, string NodeId, string? Namespace) context)
    {
        PreparedLaunch? launch = null;
        try
        {
            launch = await launcher.PrepareAsync(new LaunchSpec(program, command.Skip(1).ToList()) { Environment = EnvironmentFor(context.Name, context.NodeId, context.Namespace, fencingToken: null) }, context.Shell).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or Win32Exception or InvalidOperationException or UnauthorizedAccessException)
        {
            LogPrepareFailed(Logger, Display, ex.Message); // the next run is started the ordinary way
        }

        lock (_gate)
        {
            _preparing = false;
            if (launch is not null && !_closed && !ShuttingDown.IsCancellationRequested)
            {
                _prepared = launch;
                launch = null;
            }
        }

        launch?.Discard();
    }

    /// <summary>The process prepared for this run, if one is ready and was prepared with the same name, node and namespace.</summary>
    private PreparedLaunch? TakePrepared(ILeadership leadership)
    {
        PreparedLaunch? prepared;
        lock (_gate)
        {
            prepared = _prepared;
            _prepared = null;
            if (prepared is null)
            {
                return null;
            }

            if (_prepareFor is { } target && target.Name == leadership.Name && target.NodeId == leadership.NodeId && target.Namespace == leadership.Namespace)
            {
                return prepared;
            }
        }

        prepared.Discard();
        return null;
    }

    private static Dictionary<string, string?> EnvironmentFor(string name, string nodeId, string? ns, string? fencingToken) => new()
    {
        ["HIGHLANDER_NAME"] = name,
        ["HIGHLANDER_NODE"] = nodeId,
        ["HIGHLANDER_NAMESPACE"] = ns,
        // Never an inherited token: only this acquisition's, when fencing is on.
        ["HIGHLANDER_FENCING_TOKEN"] = fencingToken,
    };

    /// <summary>The singleton's delegate: one run of the command.</summary>
    /// <param name="leadership">The run's leadership.</param>
    /// <param name="killAfter">How long after SIGTERM the command's group is SIGKILLed: a little before the library's stop budget ends, so a stubborn command is a kill, not an escalation.</param>
    /// <param name="stopping">Fires when the command must stop.</param>
    /// <param name="running">Called once the command runs (a rehearsal's round then stops it).</param>
    public async Task RunAsync(ILeadership leadership, TimeSpan killAfter, CancellationToken stopping, Action? running = null)
    {
        ArgumentNullException.ThrowIfNull(leadership);
        // Told to stop already (the lease was lost as it was granted): not a run, so cron mode's one run is not used up.
        if (stopping.IsCancellationRequested || BeforeStart?.Invoke() == false)
        {
            return;
        }

        var token = leadership.FencingEpoch?.ToString(CultureInfo.InvariantCulture);
        Process process;
        var prepared = TakePrepared(leadership);
        if (prepared is not null && prepared.TryGo(token))
        {
            process = prepared.Process;
        }
        else
        {
            prepared?.Discard();
            prepared = null;
            try
            {
                var environment = EnvironmentFor(leadership.Name, leadership.NodeId, leadership.Namespace, token);
                process = await launcher.StartAsync(new LaunchSpec(program, command.Skip(1).ToList()) { Environment = environment }).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is Win32Exception or InvalidOperationException)
            {
                AfterExit?.Invoke(new CommandOutcome(CannotExecute, StoppedByUs: false));
                StartPreparing();
                throw new InvalidOperationException($"could not start {command[0]}: {ex.Message}", ex);
            }
        }

        var group = process.Id;
        lock (_gate)
        {
            _current = process;
        }

        LogStarted(Logger, Display, process.Id, leadership.FencingEpoch?.ToString(CultureInfo.InvariantCulture) ?? "none");
        running?.Invoke();
        int exitCode;
        bool stopped;
        var stopStarted = 0L;
        try
        {
            var exited = process.WaitForExitAsync(CancellationToken.None);
            var stopRequested = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var signalledAt = 0L; // when SIGTERM went to its group (0: not yet)
            using (stopping.Register(() =>
            {
                // SIGTERM at once, on the thread that tells the child to stop: the command stops while the rest catches up.
                if (Interlocked.CompareExchange(ref signalledAt, Stopwatch.GetTimestamp(), 0) == 0)
                {
                    Native.SignalGroupOrLeader(process, Native.SigTerm);
                }

                stopRequested.TrySetResult();
            }))
            {
                // Whether it was told to stop before it exited: that decides what its exit code means.
                stopped = await Task.WhenAny(exited, stopRequested.Task).ConfigureAwait(false) != exited || Interlocked.Read(ref signalledAt) != 0;
                if (stopped)
                {
                    stopStarted = Interlocked.Read(ref signalledAt);
                    await StopAsync(process, exited, killAfter, stopStarted).ConfigureAwait(false);
                }
            }

            await exited.ConfigureAwait(false);
            exitCode = process.ExitCode;
            await ClearGroupAsync(group, gently: !stopped, killAfter).ConfigureAwait(false);

            // What left the group (and outlived its parent) was re-parented here: stopped too, within the same budget.
            var budget = stopped ? killAfter - Stopwatch.GetElapsedTime(stopStarted) : killAfter;
            using var escapeesKill = new CancellationTokenSource(budget > TimeSpan.Zero ? budget : TimeSpan.Zero);
            if (!Rehearsal)
            {
                await Escapees.StopAsync(launcher, Display, member: null, escapeesKill.Token, Logger).ConfigureAwait(false);
            }
        }
        finally
        {
            lock (_gate)
            {
                _current = null;
            }

            launcher.Forget(group);
            process.Dispose();
            prepared?.Release(); // it has exited: its FIFO is no longer needed
            StartPreparing(); // the next run's (a restart, or a later take-over), unless the node is stopping
        }

        LogExited(Logger, Display, group, exitCode, stopped ? "after it was told to stop" : "by itself");
        AfterExit?.Invoke(new CommandOutcome(exitCode, stopped));
        if (!stopped && exitCode != 0)
        {
            throw new CommandFailedException(command[0], exitCode);
        }
    }

    /// <summary>
    /// The library's escalation (the command did not stop within its budget, or the lease is about to pass):
    /// SIGKILL the whole group now and wait briefly for it, instead of ending highlander.
    /// </summary>
    public async ValueTask KillNowAsync(EscalationContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        Process? process;
        lock (_gate)
        {
            process = _current;
        }

        Escapees.KillAll(launcher);
        if (process is null)
        {
            return;
        }

        LogEscalation(Logger, Display, context.Reason);
        Native.SignalGroupOrLeader(process, Native.SigKill); // disposed meanwhile: it has exited (the wait below ends at once)

        try
        {
            await process.WaitForExitAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(2)).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is TimeoutException or InvalidOperationException or ObjectDisposedException)
        {
        }
    }

    /// <summary>After SIGTERM (sent at <paramref name="signalledAt"/>): SIGKILL to the group if it has not exited <paramref name="killAfter"/> later.</summary>
    private async Task StopAsync(Process process, Task exited, TimeSpan killAfter, long signalledAt)
    {
        var group = process.Id;
        // The signal first (already sent), the log line after: the command stops while the line is written.
        LogStopping(Logger, Display, group, killAfter);
        var left = killAfter - Stopwatch.GetElapsedTime(signalledAt);
        if (await Task.WhenAny(exited, Task.Delay(left > TimeSpan.Zero ? left : TimeSpan.Zero)).ConfigureAwait(false) != exited)
        {
            LogKilling(Logger, Display, group, killAfter);
            Native.SignalGroupOrLeader(process, Native.SigKill);
        }
    }

    /// <summary>Ends whatever the command left in its process group: SIGTERM (when it exited by itself), then SIGKILL.</summary>
    private async Task ClearGroupAsync(int group, bool gently, TimeSpan killAfter)
    {
        if (!Native.GroupExists(group))
        {
            return;
        }

        LogLeftovers(Logger, Display, group);
        if (gently)
        {
            Native.SignalGroup(group, Native.SigTerm);
            if (await GroupGoneAsync(group, killAfter).ConfigureAwait(false))
            {
                return;
            }
        }

        Native.SignalGroup(group, Native.SigKill);
        // SIGKILLed processes die at once (only a process in uninterruptible sleep lingers, and it can run nothing more):
        // a short wait, so that the library's stop budget is not spent here.
        await GroupGoneAsync(group, TimeSpan.FromMilliseconds(200)).ConfigureAwait(false);
    }

    private static async Task<bool> GroupGoneAsync(int group, TimeSpan within)
    {
        // No notification exists for "a process group became empty" (its members are not our children): poll briefly.
        var until = Stopwatch.GetTimestamp() + (long)(within.TotalSeconds * Stopwatch.Frequency);
        while (Native.GroupExists(group))
        {
            if (Stopwatch.GetTimestamp() >= until)
            {
                return false;
            }

            await Task.Delay(20).ConfigureAwait(false);
        }

        return true;
    }

    [LoggerMessage(EventId = HighlanderEventIds.CommandStarted, Level = LogLevel.Information, Message = "Started {Command} (pid {Pid}, fencing token {Token})")]
    private static partial void LogStarted(ILogger logger, string command, int pid, string token);

    [LoggerMessage(EventId = HighlanderEventIds.CommandExited, Level = LogLevel.Information, Message = "{Command} (pid {Pid}) exited with code {ExitCode} {How}")]
    private static partial void LogExited(ILogger logger, string command, int pid, int exitCode, string how);

    [LoggerMessage(EventId = HighlanderEventIds.CommandStopping, Level = LogLevel.Information, Message = "Stopping {Command}: SIGTERM to process group {Group}, SIGKILL after {KillAfter}")]
    private static partial void LogStopping(ILogger logger, string command, int group, TimeSpan killAfter);

    [LoggerMessage(EventId = HighlanderEventIds.CommandKilled, Level = LogLevel.Warning, Message = "{Command} (process group {Group}) did not stop within {KillAfter} of SIGTERM: SIGKILL")]
    private static partial void LogKilling(ILogger logger, string command, int group, TimeSpan killAfter);

    [LoggerMessage(EventId = HighlanderEventIds.CommandLeftovers, Level = LogLevel.Warning, Message = "{Command} left processes running in its process group {Group}: stopping them")]
    private static partial void LogLeftovers(ILogger logger, string command, int group);

    [LoggerMessage(EventId = HighlanderEventIds.CommandPrepareFailed, Level = LogLevel.Debug, Message = "Could not start {Command}'s next run ahead ({Reason}); it will be started when it is due")]
    private static partial void LogPrepareFailed(ILogger logger, string command, string reason);

    [LoggerMessage(EventId = HighlanderEventIds.CommandEscalated, Level = LogLevel.Critical, Message = "Escalation for {Command}: SIGKILL to its process group now ({Reason})")]
    private static partial void LogEscalation(ILogger logger, string command, string reason);
}
