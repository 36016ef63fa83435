using HighlanderPG.Diagnostics;
using HighlanderPG.Supervision;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace HighlanderPG.Groups;

/// <summary>
/// The child of a singleton group's singleton: it starts the members in declared order, supervises them with the group's
/// strategy and intensity, and stops them in reverse order. Its execution (what the singleton's runner and lease guard
/// watch) does not end while any member's code still runs, so the lock is released, and the lease guard escalates, exactly
/// as for a single child.
/// </summary>
internal sealed class GroupSupervisor : BackgroundService
{
    private readonly SingletonGroup _group;
    private readonly ILeadership _leadership;
    private readonly IServiceProvider _services;
    private readonly TimeSpan _stopTimeout;
    private readonly ILogger _logger;
    private readonly Action _requestStepDown;
    private readonly TaskCompletionSource _started = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly CancellationTokenSource _hurry = new();
    private readonly Slot[] _slots;

    public GroupSupervisor(SingletonGroup group, ILeadership leadership, IServiceProvider services, TimeSpan stopTimeout, ILogger logger, Action requestStepDown)
    {
        _group = group;
        _leadership = leadership;
        _services = services;
        _stopTimeout = stopTimeout;
        _logger = logger;
        _requestStepDown = requestStepDown;
        _slots = group.Members.Select((m, i) => new Slot(i, m)).ToArray();
    }

    private TimeProvider Time => _group.Time;

    /// <summary>Returns once every member has been started in declared order (or the group failed, or it must stop).</summary>
    public override async Task StartAsync(CancellationToken cancellationToken)
    {
        await base.StartAsync(cancellationToken).ConfigureAwait(false);
        if (ExecuteTask is { } execution)
        {
            await Task.WhenAny(_started.Task, execution).WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Stops the group; <paramref name="cancellationToken"/> (fired by the runner when the singleton's stop time is up)
    /// is passed on to the members' stops as the host does.
    /// </summary>
    public override async Task StopAsync(CancellationToken cancellationToken)
    {
        using var forward = cancellationToken.Register(static h => ((CancellationTokenSource)h!).Cancel(), _hurry);
        await base.StopAsync(cancellationToken).ConfigureAwait(false);
    }

    public override void Dispose()
    {
        _hurry.Dispose();
        base.Dispose();
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        await Task.Yield();
        var intensity = new RestartIntensity(Time, _group.MaxRestarts, _group.RestartWindow);
        foreach (var slot in _slots)
        {
            slot.Wanted = true;
        }

        var failing = false;
        var completed = false;
        try
        {
            while (!stoppingToken.IsCancellationRequested)
            {
                // Start, in declared order, every member that should run and does not; a failed start is a failure.
                Slot? exited = null;
                foreach (var slot in _slots)
                {
                    if (stoppingToken.IsCancellationRequested)
                    {
                        break;
                    }

                    if (slot.Wanted && slot.Run is null && !await StartMemberAsync(slot, stoppingToken).ConfigureAwait(false))
                    {
                        exited = slot;
                        break;
                    }
                }

                if (stoppingToken.IsCancellationRequested)
                {
                    break;
                }

                if (exited is null)
                {
                    _started.TrySetResult();
                    var running = _slots.Where(s => s.Run is not null).ToList();
                    if (running.Count == 0)
                    {
                        Log.GroupCompleted(_logger, _group.Name);
                        completed = true;
                        return; // nothing runs and nothing is to be restarted: the group completed
                    }

                    exited = running.FirstOrDefault(s => s.Run!.Completion.IsCompleted);
                    if (exited is null)
                    {
                        using var stopSignal = new CancellationSignal(stoppingToken);
                        await Task.WhenAny(running.Select(s => s.Run!.Completion).Append(stopSignal.Task)).ConfigureAwait(false);
                        continue;
                    }
                }

                await HandleExitAsync(exited, intensity).ConfigureAwait(false);
            }
        }
        catch (Exception) when (!stoppingToken.IsCancellationRequested)
        {
            failing = true;
            throw;
        }
        finally
        {
            // Reverse declared order; a stop the runner asked for is bounded by the runner (its stop timeout, then escalation).
            var reason = failing ? "the group failed" : completed ? "the group completed" : "the group is stopping";
            for (var i = _slots.Length - 1; i >= 0; i--)
            {
                if (_slots[i].Run is not null)
                {
                    await StopMemberAsync(_slots[i], reason, bounded: !stoppingToken.IsCancellationRequested).ConfigureAwait(false);
                }
            }

            foreach (var slot in _slots)
            {
                _group.SetState(slot.Index, GroupMemberState.Stopped, reason, _leadership.FencingEpoch);
            }

            _started.TrySetResult();
        }
    }

    private async Task<bool> StartMemberAsync(Slot slot, CancellationToken stoppingToken)
    {
        _group.SetState(slot.Index, GroupMemberState.Starting, slot.StartReason, _leadership.FencingEpoch);
        var run = MemberIncarnation.Create(slot.Spec, _services, _leadership);
        slot.Run = run;
        await run.StartAsync(stoppingToken).ConfigureAwait(false);
        if (run.StartError is null)
        {
            Log.GroupMemberStarted(_logger, _group.Name, slot.Spec.Name);
            _group.SetState(slot.Index, GroupMemberState.Running, "started", _leadership.FencingEpoch);
            return true;
        }

        return stoppingToken.IsCancellationRequested; // a start cut short by the group's stop is not a failure
    }

    private async Task HandleExitAsync(Slot slot, RestartIntensity intensity)
    {
        var run = slot.Run!;
        var error = run.Error;
        var failed = error is not null;
        var spec = slot.Spec;
        var describe = failed ? $"{error!.GetType().Name}: {error.Message}" : null;
        if (failed)
        {
            Log.GroupMemberFailed(_logger, error!, _group.Name, spec.Name, spec.Restart);
        }
        else
        {
            Log.GroupMemberCompleted(_logger, _group.Name, spec.Name, spec.Restart);
        }

        await StopMemberAsync(slot, failed ? "it failed" : "it completed", bounded: true, endedOnItsOwn: true, error: describe).ConfigureAwait(false);
        var restart = spec.Restart == MemberRestart.Permanent || (spec.Restart == MemberRestart.Transient && failed);
        if (!restart)
        {
            slot.Wanted = false;
            slot.Removed = spec.Restart == MemberRestart.Temporary;
            _group.SetState(slot.Index, failed ? GroupMemberState.Failed : GroupMemberState.Completed, $"{(failed ? "failed" : "completed")}; {spec.Restart} members are not restarted{(failed ? "" : " after a normal completion")}", _leadership.FencingEpoch, describe);
            return;
        }

        if (!intensity.TryRecord())
        {
            Log.GroupIntensityExceeded(_logger, _group.Name, spec.Name, _group.MaxRestarts, _group.RestartWindow);
            throw new InvalidOperationException(
                $"Group '{_group.Name}' restarted more than {_group.MaxRestarts} time(s) within {_group.RestartWindow} (member '{spec.Name}' {(failed ? "failed: " + describe : "completed")}): "
                + "the group fails as a whole; the singleton's restart policy applies.");
        }

        _group.CountGroupRestart();
        var affected = _group.Strategy switch
        {
            GroupStrategy.OneForAll => _slots.ToList(),
            GroupStrategy.RestForOne => _slots.Skip(slot.Index).ToList(),
            _ => [slot],
        };
        var why = $"restarting with '{spec.Name}' ({_group.Strategy})";
        Log.GroupRestarting(_logger, _group.Name, spec.Name, _group.Strategy, string.Join(", ", affected.Where(s => !s.Removed).Select(s => s.Spec.Name)));
        for (var i = affected.Count - 1; i >= 0; i--)
        {
            var sibling = affected[i];
            if (sibling != slot && sibling.Run is not null)
            {
                await StopMemberAsync(sibling, why, bounded: true).ConfigureAwait(false);
                if (sibling.Spec.Restart == MemberRestart.Temporary)
                {
                    sibling.Removed = true;
                    sibling.Wanted = false;
                    _group.SetState(sibling.Index, GroupMemberState.Completed, $"stopped by a sibling's restart; {MemberRestart.Temporary} members are not restarted", _leadership.FencingEpoch);
                }
            }
        }

        foreach (var member in affected.Where(s => !s.Removed))
        {
            member.Wanted = true;
            member.StartReason = member == slot ? $"restarting ({(failed ? "it failed" : "it completed")}; {_group.Strategy})" : why;
            _group.CountMemberRestart(member.Index);
        }
    }

    /// <summary>
    /// Stops one member and waits until it is gone. When the group itself stops, the runner bounds this (stop timeout,
    /// then escalation). Otherwise (a restart, or the group failing) the member gets the node's stop timeout; one that
    /// has not stopped by then makes the group step down, so that the runner's stop timeout and escalation apply to it.
    /// </summary>
    private async Task StopMemberAsync(Slot slot, string reason, bool bounded, bool endedOnItsOwn = false, string? error = null)
    {
        var run = slot.Run!;
        if (!endedOnItsOwn)
        {
            _group.SetState(slot.Index, GroupMemberState.Stopping, reason, _leadership.FencingEpoch);
        }

        var stopped = Time.GetTimestamp();
        using var budget = bounded ? new CancellationTokenSource(_stopTimeout, Time) : null;
        using var hurry = CancellationTokenSource.CreateLinkedTokenSource(_hurry.Token, budget?.Token ?? CancellationToken.None);
        var stop = run.StopAsync(hurry.Token);
        if (bounded)
        {
            using var late = new CancellationSignal(budget!.Token);
            if (await Task.WhenAny(stop, late.Task).ConfigureAwait(false) != stop)
            {
                Log.GroupMemberStopTimeout(_logger, _group.Name, slot.Spec.Name, _stopTimeout);
                _requestStepDown();
            }
        }

        await stop.ConfigureAwait(false);
        await run.DisposeAsync().ConfigureAwait(false);
        slot.Run = null;
        if (!endedOnItsOwn)
        {
            Log.GroupMemberStopped(_logger, _group.Name, slot.Spec.Name, Time.GetElapsedTime(stopped));
            _group.SetState(slot.Index, GroupMemberState.Stopped, reason, _leadership.FencingEpoch);
        }
        else if (error is not null)
        {
            _group.SetState(slot.Index, GroupMemberState.Stopped, $"failed: {error}", _leadership.FencingEpoch, error);
        }
        else
        {
            _group.SetState(slot.Index, GroupMemberState.Stopped, "completed", _leadership.FencingEpoch);
        }
    }

    private sealed class Slot(int index, GroupMemberSpec spec)
    {
        public int Index { get; } = index;

        public GroupMemberSpec Spec { get; } = spec;

        public MemberIncarnation? Run { get; set; }

        /// <summary>Should run: started by the next start pass when it does not.</summary>
        public bool Wanted { get; set; }

        /// <summary>A temporary member that ended: never started again in this run of the group.</summary>
        public bool Removed { get; set; }

        public string StartReason { get; set; } = "the group started";
    }
}
