using Microsoft.Extensions.Hosting;

namespace HighlanderPG.Tests.Infrastructure;

/// <summary>How a test's child behaves; one instance shared by all nodes of a test.</summary>
public sealed class ChildBehavior
{
    /// <summary>Throw this many times (one per run) before behaving.</summary>
    public int FailuresLeft;

    /// <summary>Ignore cancellation: keep running until <see cref="Kill"/>.</summary>
    public bool IgnoreCancellation;

    /// <summary>Complete normally right after starting.</summary>
    public bool CompleteAtOnce;

    private readonly TaskCompletionSource _killed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Ends a child that ignores cancellation (what ending its process would do).</summary>
    public void Kill() => _killed.TrySetResult();

    internal Task Killed => _killed.Task;
}

/// <summary>A cluster singleton child that records its life.</summary>
public sealed class RecordingService(LifeJournal recorder, ChildBehavior behavior, ILeadership leadership) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        recorder.Record(leadership.NodeId, leadership.Name, LifeKind.Started);
        var killed = false;
        try
        {
            if (Interlocked.Decrement(ref behavior.FailuresLeft) >= 0)
            {
                await Task.Yield();
                throw new InvalidOperationException("child failure injected by the test");
            }

            if (behavior.CompleteAtOnce)
            {
                return;
            }

            if (behavior.IgnoreCancellation)
            {
                await behavior.Killed;
                killed = true;
                return;
            }

            await Task.Delay(Timeout.Infinite, stoppingToken);
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
        finally
        {
            recorder.Record(leadership.NodeId, leadership.Name, killed ? LifeKind.Killed : LifeKind.Stopped);
        }
    }
}
