using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using HighlanderPG.Cli.Processes;
using HighlanderPG.Diagnostics;
using HighlanderPG.Supervision;
using Microsoft.Extensions.Logging;

namespace HighlanderPG.Cli.Running;

/// <summary>Which members are restarted when one exits and is to be restarted (OTP's restart strategies).</summary>
internal enum GroupStrategy
{
    /// <summary>Only the member that exited.</summary>
    OneForOne,

    /// <summary>Every member: the others are stopped (in reverse order), then all are started again (in order).</summary>
    OneForAll,

    /// <summary>The member that exited and every member after it in the file.</summary>
    RestForOne,
}

/// <summary>What <c>highlander run --procfile</c> was told about its group.</summary>
internal sealed record GroupSettings
{
    /// <summary>The procfile, as given (for messages).</summary>
    public required string Procfile { get; init; }

    /// <summary>The members, in the file's order: the order they start in (and the reverse of the order they stop in).</summary>
    public required IReadOnlyList<GroupMember> Members { get; init; }

    /// <summary>The directory the members run in: the procfile's, as with foreman and honcho.</summary>
    public required string WorkingDirectory { get; init; }

    public GroupStrategy Strategy { get; init; } = GroupStrategy.OneForOne;

    /// <summary>Members whose restart policy is not <c>--restart</c>'s.</summary>
    public IReadOnlyDictionary<string, RestartPolicy> MemberRestarts { get; init; } = new Dictionary<string, RestartPolicy>();

    /// <summary>Prefix each line of the members' output with the member's name (<c>--no-prefix</c> turns it off).</summary>
    public bool PrefixOutput { get; init; } = true;

    /// <summary>The strategy as the command line spells it.</summary>
    public static string Spell(GroupStrategy strategy) => strategy switch
    {
        GroupStrategy.OneForAll => "one-for-all",
        GroupStrategy.RestForOne => "rest-for-one",
        _ => "one-for-one",
    };

    /// <summary>The restart policy as the command line spells it.</summary>
    public static string Spell(RestartPolicy policy) => policy switch
    {
        RestartPolicy.OnFailure => "on-failure",
        RestartPolicy.Never => "never",
        _ => "always",
    };
}

/// <summary>
/// The cluster singleton's child for a group: runs every member of a Procfile, each as <c>/bin/sh -c LINE</c> in its own
/// session and process group, supervises them with an OTP restart strategy while this node leads, and stops them all
/// in reverse order before the library may release the lock.
/// </summary>
/// <remarks>
/// <para>
/// Members start in the file's order once the lock is held. A member that exits by itself has what it left in its process
/// group stopped, then its restart policy decides (<c>always</c>: any exit is restarted; <c>on-failure</c>: a non-zero
/// exit; <c>never</c>: none): restarts happen here, under the lock, which is never released for them. The strategy
/// decides which members restart with it; every restart counts once against the group's restart intensity
/// (<c>--max-restarts</c> within <c>--restart-window</c>); more is a crash loop: every member is stopped, in reverse
/// order, and <see cref="GiveUp"/> is called.
/// </para>
/// <para>
/// Told to stop (the token fires: lease being lost, step-down, shutdown), it stops the members in reverse order: SIGTERM
/// to a member's process group, then it waits until that whole group is gone before the next member is told. The group as
/// a whole has one stop budget, the command's: at the kill point (<c>killAfter</c> after the token fired, shortly before
/// the library's stop timeout ends) every member still there is SIGKILLed, still in reverse order, each group gone before
/// the next. This returns only once no process of any member is left, so the lock is released (or the lease passes) only
/// then; the library's escalation (<see cref="KillNowAsync"/>) SIGKILLs whatever is left if that takes too long.
/// </para>
/// </remarks>
internal sealed partial class GroupChild(GroupSettings group, RunSettings settings, string shell, ProcessLauncher launcher)
{
    /// <summary>The shell's code for a command that could not be executed.</summary>
    public const int CannotExecute = 126;

    /// <summary>How long after SIGKILL a process group may take to disappear before the next member is stopped.</summary>
    private static readonly TimeSpan AfterKill = TimeSpan.FromMilliseconds(200);

    private readonly Lock _gate = new();
    private readonly List<(Process Leader, int Group)> _runningGroups = [];
    private readonly int _width = group.Members.Max(m => m.Name.Length);
    private string? _failure;

    /// <summary>Where to log (set once the host's logging is built).</summary>
    public ILogger Logger { get; set; } = Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance;

    /// <summary>Called once the group crash-looped and every member is stopped: ends <c>highlander</c> (exit 1).</summary>
    public Action? GiveUp { get; set; }

    /// <summary>Why the group gave up (a crash loop), or <see langword="null"/>.</summary>
    public string? Failure
    {
        get
        {
            lock (_gate)
            {
                return _failure;
            }
        }
    }

    private string Name => settings.Name;

    private TimeSpan RestartDelay => settings.RestartDelay ?? TimeSpan.FromSeconds(1);

    /// <summary>The singleton's delegate: one run of the group, for one acquisition of the lock.</summary>
    /// <param name="leadership">The run's leadership.</param>
    /// <param name="killAfter">How long after the stop request the members still running are SIGKILLed (the command's <c>ChildKillAfter</c>).</param>
    /// <param name="stopping">Fires when the group must stop.</param>
    public async Task RunAsync(ILeadership leadership, TimeSpan killAfter, CancellationToken stopping)
    {
        ArgumentNullException.ThrowIfNull(leadership);
        if (stopping.IsCancellationRequested)
        {
            return;
        }

        var slots = group.Members.Select(m => new Slot(m, group.MemberRestarts.TryGetValue(m.Name, out var policy) ? policy : settings.Restart ?? RestartPolicy.Always)).ToArray();
        var environment = new Dictionary<string, string?>
        {
            ["HIGHLANDER_NAME"] = leadership.Name,
            ["HIGHLANDER_NODE"] = leadership.NodeId,
            ["HIGHLANDER_NAMESPACE"] = leadership.Namespace,
            // Never an inherited token: only this acquisition's, when fencing is on.
            ["HIGHLANDER_FENCING_TOKEN"] = leadership.FencingEpoch?.ToString(CultureInfo.InvariantCulture),
        };
        var token = leadership.FencingEpoch?.ToString(CultureInfo.InvariantCulture) ?? "none";

        // The group's kill point once it is told to stop: killAfter after the stop request, armed once (whatever comes first:
        // the token, a crash loop, or an unexpected error).
        using var killPoint = new CancellationTokenSource();
        var armed = 0;
        void ArmKillPoint()
        {
            if (Interlocked.Exchange(ref armed, 1) == 0)
            {
                killPoint.CancelAfter(killAfter);
            }
        }

        using var registration = stopping.Register(ArmKillPoint);
        var stopRequested = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var stopSignal = stopping.Register(() => stopRequested.TrySetResult());
        var intensity = new RestartIntensity(TimeProvider.System, settings.MaxRestarts ?? 5, settings.RestartWindow ?? TimeSpan.FromMinutes(1));
        var why = "highlander stops leading";
        LogGroupStarting(Logger, Name, slots.Length, string.Join(", ", slots.Select(s => s.Member.Name)), GroupSettings.Spell(group.Strategy), token);
        try
        {
            await StartAsync(slots, environment, token, stopping).ConfigureAwait(false);
            while (!stopping.IsCancellationRequested)
            {
                var running = slots.Where(s => s.Exit is not null).ToList();
                if (running.Count == 0)
                {
                    // Like a single command with --restart never: this node keeps the name, so the work does not run elsewhere.
                    LogGroupIdle(Logger, Name);
                    why = "no member runs";
                    return;
                }

                await Task.WhenAny(running.Select(s => (Task)s.Exit!).Append(stopRequested.Task)).ConfigureAwait(false);
                if (stopping.IsCancellationRequested)
                {
                    break;
                }

                // The first member in the file's order among those that exited; the others are seen on the next turns.
                var exited = running.First(s => s.Exit!.IsCompleted);
                var code = await EndExitedAsync(exited, killAfter, killPoint.Token).ConfigureAwait(false);
                var restart = exited.Restart == RestartPolicy.Always || (exited.Restart == RestartPolicy.OnFailure && code != 0);
                if (!restart)
                {
                    // OTP: a temporary member is never restarted (not even with its siblings); a transient one that ended
                    // normally is, when a sibling's restart takes it along.
                    exited.Removed = exited.Restart == RestartPolicy.Never;
                    LogNotRestarted(Logger, exited.Member.Name, code, GroupSettings.Spell(exited.Restart));
                    continue;
                }

                if (!intensity.TryRecord())
                {
                    var failure = $"the group restarted more than {(settings.MaxRestarts ?? 5).ToString(CultureInfo.InvariantCulture)} times within {Configuration.Durations.Format(settings.RestartWindow ?? TimeSpan.FromMinutes(1))} (last: member '{exited.Member.Name}' exited with code {code.ToString(CultureInfo.InvariantCulture)})";
                    lock (_gate)
                    {
                        _failure = failure;
                    }

                    LogCrashLoop(Logger, Name, exited.Member.Name, code, settings.MaxRestarts ?? 5, settings.RestartWindow ?? TimeSpan.FromMinutes(1));
                    why = "crash loop";
                    ArmKillPoint();
                    await StopAsync(slots, killPoint.Token).ConfigureAwait(false);
                    GiveUp?.Invoke();
                    return;
                }

                var index = Array.IndexOf(slots, exited);
                var scope = group.Strategy switch
                {
                    GroupStrategy.OneForAll => slots,
                    GroupStrategy.RestForOne => slots[index..],
                    _ => [exited],
                };
                var restarting = scope.Where(s => s == exited || (!s.Removed && s.Restart != RestartPolicy.Never)).Select(s => s.Member.Name);
                LogRestarting(Logger, string.Join(", ", restarting), GroupSettings.Spell(group.Strategy), exited.Member.Name, code, Configuration.Durations.Format(RestartDelay));

                // The others in scope stop first, in reverse order, with a stop budget of their own (cut short by a stop request).
                using (var restartKill = CancellationTokenSource.CreateLinkedTokenSource(killPoint.Token))
                {
                    restartKill.CancelAfter(killAfter);
                    await StopAsync(scope, restartKill.Token).ConfigureAwait(false);
                }

                foreach (var slot in scope)
                {
                    if (slot.Restart == RestartPolicy.Never && slot != exited)
                    {
                        slot.Removed = true; // a temporary member stopped because of a sibling is not restarted (OTP)
                    }
                }

                if (RestartDelay > TimeSpan.Zero)
                {
                    await Task.WhenAny(Task.Delay(RestartDelay, CancellationToken.None), stopRequested.Task).ConfigureAwait(false);
                }

                if (!stopping.IsCancellationRequested)
                {
                    await StartAsync(scope, environment, token, stopping).ConfigureAwait(false);
                }
            }
        }
        catch (Exception ex)
        {
            // Not expected: give up like a crash loop (exit 1) rather than hold the name with members unsupervised.
            why = "unexpected error: " + ex.Message;
            lock (_gate)
            {
                _failure = why;
            }

            GiveUp?.Invoke();
            throw;
        }
        finally
        {
            // Every member, in reverse order, before the library may release the lock; then whatever escaped from any of them.
            ArmKillPoint();
            var stoppedCount = await StopAsync(slots, killPoint.Token).ConfigureAwait(false);
            stoppedCount += await Escapees.StopAsync(launcher, $"'{Name}'", member: null, killPoint.Token, Logger).ConfigureAwait(false);
            if (stoppedCount > 0 || why != "no member runs")
            {
                LogGroupStopped(Logger, Name, why);
            }
        }
    }

    /// <summary>
    /// The library's escalation (the group did not stop within its budget, or the lease is about to pass): SIGKILL every
    /// member's process group now, last started first, and wait briefly for them, instead of ending highlander.
    /// </summary>
    public async ValueTask KillNowAsync(EscalationContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        (Process Leader, int Group)[] groups;
        lock (_gate)
        {
            groups = [.. Enumerable.Reverse(_runningGroups)];
        }

        Escapees.KillAll(launcher);
        if (groups.Length == 0)
        {
            return;
        }

        LogEscalation(Logger, Name, context.Reason);
        foreach (var (leader, _) in groups)
        {
            Native.SignalGroupOrLeader(leader, Native.SigKill); // a member started an instant ago may not lead its group yet
        }

        foreach (var (_, processGroup) in groups)
        {
            await GroupGoneAsync(processGroup, null, TimeSpan.FromSeconds(2), CancellationToken.None).ConfigureAwait(false);
        }
    }

    /// <summary>Starts the members of <paramref name="slots"/> that are not running and not removed, in order, unless told to stop.</summary>
    private async Task StartAsync(IEnumerable<Slot> slots, Dictionary<string, string?> environment, string token, CancellationToken stopping)
    {
        foreach (var slot in slots)
        {
            if (stopping.IsCancellationRequested)
            {
                return;
            }

            if (slot.Exit is not null || slot.Removed)
            {
                continue;
            }

            var spec = new LaunchSpec(shell, ["-c", slot.Member.CommandLine])
            {
                Environment = new Dictionary<string, string?>(environment) { ["HIGHLANDER_MEMBER"] = slot.Member.Name },
                RedirectOutput = group.PrefixOutput,
                WorkingDirectory = group.WorkingDirectory,
            };
            Process process;
            try
            {
                process = await launcher.StartAsync(spec).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is Win32Exception or InvalidOperationException)
            {
                LogStartFailed(Logger, slot.Member.Name, ex.Message);
                slot.Exit = Task.FromResult(CannotExecute);
                continue;
            }

            slot.Process = process;
            slot.Group = process.Id;
            lock (_gate)
            {
                _runningGroups.Add((process, process.Id));
            }

            if (group.PrefixOutput)
            {
                var prefix = PrefixedOutput.Prefix(slot.Member.Name, _width);
                slot.Pumps = [PrefixedOutput.PumpAsync(process.StandardOutput.BaseStream, prefix, toStderr: false), PrefixedOutput.PumpAsync(process.StandardError.BaseStream, prefix, toStderr: true)];
            }

            slot.Exit = process.WaitForExitAsync(CancellationToken.None).ContinueWith(_ => process.ExitCode, CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default);
            LogMemberStarted(Logger, slot.Member.Name, process.Id, token);
        }
    }

    /// <summary>
    /// Stops the running members of <paramref name="slots"/> in reverse order: SIGTERM to a member's process group, and the
    /// next only once that whole group is gone; at <paramref name="killPoint"/>, SIGKILL instead. Returns how many it stopped.
    /// </summary>
    private async Task<int> StopAsync(IEnumerable<Slot> slots, CancellationToken killPoint)
    {
        var stopped = 0;
        foreach (var slot in slots.Reverse())
        {
            if (slot.Exit is null)
            {
                continue;
            }

            stopped++;
            if (slot.Process is null)
            {
                // It could not be started: nothing runs.
                slot.Exit = null;
                continue;
            }

            var processGroup = slot.Group;
            var gone = false;
            if (!killPoint.IsCancellationRequested)
            {
                LogStopping(Logger, slot.Member.Name, processGroup);
                Native.SignalGroupOrLeader(slot.Process, Native.SigTerm);
                gone = await GroupGoneAsync(processGroup, slot.Exit, Timeout.InfiniteTimeSpan, killPoint).ConfigureAwait(false);
            }

            if (!gone)
            {
                LogKilled(Logger, slot.Member.Name, processGroup);
                Native.SignalGroupOrLeader(slot.Process, Native.SigKill);
                await GroupGoneAsync(processGroup, slot.Exit, AfterKill, CancellationToken.None).ConfigureAwait(false);
            }

            var code = slot.Exit.IsCompleted ? await slot.Exit.ConfigureAwait(false) : 128 + Native.SigKill;
            LogMemberExited(Logger, slot.Member.Name, processGroup, code, "after it was told to stop");
            Forget(slot);

            // What left its process group (and was re-parented to highlander), before the next member is stopped.
            await Escapees.StopAsync(launcher, $"member {slot.Member.Name}", slot.Member.Name, killPoint, Logger).ConfigureAwait(false);
        }

        return stopped;
    }

    /// <summary>A member exited by itself: stops what it left in its process group (SIGTERM, SIGKILL at the kill point) and returns its exit code.</summary>
    private async Task<int> EndExitedAsync(Slot slot, TimeSpan killAfter, CancellationToken killPoint)
    {
        var code = await slot.Exit!.ConfigureAwait(false);
        if (slot.Process is null)
        {
            slot.Exit = null;
            return code;
        }

        var processGroup = slot.Group;
        if (Native.GroupExists(processGroup))
        {
            LogLeftovers(Logger, slot.Member.Name, processGroup);
            Native.SignalGroup(processGroup, Native.SigTerm);
            using var leftoversKill = CancellationTokenSource.CreateLinkedTokenSource(killPoint);
            leftoversKill.CancelAfter(killAfter);
            if (!await GroupGoneAsync(processGroup, null, Timeout.InfiniteTimeSpan, leftoversKill.Token).ConfigureAwait(false))
            {
                Native.SignalGroup(processGroup, Native.SigKill);
                await GroupGoneAsync(processGroup, null, AfterKill, CancellationToken.None).ConfigureAwait(false);
            }
        }

        using (var escapeesKill = CancellationTokenSource.CreateLinkedTokenSource(killPoint))
        {
            escapeesKill.CancelAfter(killAfter);
            await Escapees.StopAsync(launcher, $"member {slot.Member.Name}", slot.Member.Name, escapeesKill.Token, Logger).ConfigureAwait(false);
        }

        if (slot.Pumps.Length > 0)
        {
            // Its last lines before the word that it exited (bounded: a process that left the group may hold the pipe).
            await Task.WhenAny(Task.WhenAll(slot.Pumps), Task.Delay(AfterKill, CancellationToken.None)).ConfigureAwait(false);
        }

        LogMemberExited(Logger, slot.Member.Name, processGroup, code, "by itself");
        Forget(slot);
        return code;
    }

    private void Forget(Slot slot)
    {
        lock (_gate)
        {
            _runningGroups.RemoveAll(r => r.Group == slot.Group);
        }

        launcher.Forget(slot.Group);
        if (slot.Process is { } process)
        {
            // Its output pipes close once every process holding them is gone: the copies finish first, so that nothing the
            // member wrote while it stopped is lost (disposing the process would close the pipes under them).
            _ = Task.WhenAll(slot.Pumps).ContinueWith(_ => process.Dispose(), CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default);
        }

        slot.Process = null;
        slot.Exit = null;
        slot.Group = 0;
        slot.Pumps = [];
    }

    /// <summary>
    /// Waits until the leader has exited (when <paramref name="leaderExit"/> is given) and no live process is left in the
    /// group; false when <paramref name="within"/> passed or <paramref name="giveUp"/> fired first.
    /// </summary>
    private static async Task<bool> GroupGoneAsync(int processGroup, Task? leaderExit, TimeSpan within, CancellationToken giveUp)
    {
        // No notification exists for "a process group became empty" (its members are not our children): poll briefly.
        var until = within == Timeout.InfiniteTimeSpan ? long.MaxValue : Stopwatch.GetTimestamp() + (long)(within.TotalSeconds * Stopwatch.Frequency);
        while ((leaderExit is { IsCompleted: false }) || Native.GroupExists(processGroup))
        {
            if (giveUp.IsCancellationRequested || Stopwatch.GetTimestamp() >= until)
            {
                return false;
            }

            await Task.Delay(20, CancellationToken.None).ConfigureAwait(false);
        }

        return true;
    }

    /// <summary>One member's place in the group.</summary>
    private sealed class Slot(GroupMember member, RestartPolicy restart)
    {
        public GroupMember Member { get; } = member;

        public RestartPolicy Restart { get; } = restart;

        /// <summary>Its process, while it runs.</summary>
        public Process? Process { get; set; }

        /// <summary>Its process group (its pid), while it runs.</summary>
        public int Group { get; set; }

        /// <summary>Completes with its exit code; <see langword="null"/> when it does not run.</summary>
        public Task<int>? Exit { get; set; }

        /// <summary>The copies of its output (with prefixing).</summary>
        public Task[] Pumps { get; set; } = [];

        /// <summary>A <c>never</c> member that ended: it is not started again in this run of the group.</summary>
        public bool Removed { get; set; }
    }

    [LoggerMessage(EventId = HighlanderEventIds.GroupStarting, Level = LogLevel.Information, Message = "Leading '{Name}': starting its {Count} members in order ({Members}), strategy {Strategy}, fencing token {Token}")]
    private static partial void LogGroupStarting(ILogger logger, string name, int count, string members, string strategy, string token);

    [LoggerMessage(EventId = HighlanderEventIds.MemberStarted, Level = LogLevel.Information, Message = "Started member {Member} (pid {Pid}, fencing token {Token})")]
    private static partial void LogMemberStarted(ILogger logger, string member, int pid, string token);

    [LoggerMessage(EventId = HighlanderEventIds.MemberStartFailed, Level = LogLevel.Error, Message = "Could not start member {Member}: {Error}")]
    private static partial void LogStartFailed(ILogger logger, string member, string error);

    [LoggerMessage(EventId = HighlanderEventIds.MemberExited, Level = LogLevel.Information, Message = "Member {Member} (pid {Pid}) exited with code {ExitCode} {How}")]
    private static partial void LogMemberExited(ILogger logger, string member, int pid, int exitCode, string how);

    [LoggerMessage(EventId = HighlanderEventIds.MemberStopping, Level = LogLevel.Information, Message = "Stopping member {Member}: SIGTERM to process group {Group}")]
    private static partial void LogStopping(ILogger logger, string member, int group);

    [LoggerMessage(EventId = HighlanderEventIds.MemberKilled, Level = LogLevel.Warning, Message = "Member {Member} (process group {Group}) was still running at the group's kill point: SIGKILL")]
    private static partial void LogKilled(ILogger logger, string member, int group);

    [LoggerMessage(EventId = HighlanderEventIds.MemberLeftovers, Level = LogLevel.Warning, Message = "Member {Member} left processes running in its process group {Group}: stopping them")]
    private static partial void LogLeftovers(ILogger logger, string member, int group);

    [LoggerMessage(EventId = HighlanderEventIds.MemberRestarting, Level = LogLevel.Warning, Message = "Restarting {Members} ({Strategy}: member {Member} exited with code {ExitCode}), in {Delay}")]
    private static partial void LogRestarting(ILogger logger, string members, string strategy, string member, int exitCode, string delay);

    [LoggerMessage(EventId = HighlanderEventIds.MemberNotRestarted, Level = LogLevel.Information, Message = "Member {Member} exited with code {ExitCode} and is not restarted (its restart policy is {Policy})")]
    private static partial void LogNotRestarted(ILogger logger, string member, int exitCode, string policy);

    [LoggerMessage(EventId = HighlanderEventIds.GroupCrashLoop, Level = LogLevel.Critical, Message = "'{Name}' crash-looped: more than {MaxRestarts} restarts within {Window} (last: member {Member} exited with code {ExitCode}); stopping every member and giving up")]
    private static partial void LogCrashLoop(ILogger logger, string name, string member, int exitCode, int maxRestarts, TimeSpan window);

    [LoggerMessage(EventId = HighlanderEventIds.GroupEscalated, Level = LogLevel.Critical, Message = "Escalation for '{Name}': SIGKILL to every member's process group now ({Reason})")]
    private static partial void LogEscalation(ILogger logger, string name, string reason);

    [LoggerMessage(EventId = HighlanderEventIds.GroupIdle, Level = LogLevel.Warning, Message = "No member of '{Name}' runs any more and none is to be restarted; this node keeps the name until it stops")]
    private static partial void LogGroupIdle(ILogger logger, string name);

    [LoggerMessage(EventId = HighlanderEventIds.GroupStopped, Level = LogLevel.Information, Message = "Every member of '{Name}' is stopped ({Reason})")]
    private static partial void LogGroupStopped(ILogger logger, string name, string reason);
}
