using HighlanderPG.Cli.Processes;
using HighlanderPG.Cli.Running;

namespace HighlanderPG.Cli.Tests;

/// <summary>
/// A command told to stop in the instant it starts (a step-down or a lost lease right after the take-over, a rehearsal's
/// round): it is then still <c>setpriv</c> or <c>setsid</c> on its way to the command, or the <c>sh</c> started ahead
/// waiting on its FIFO, and may not lead a process group of its own yet. Its SIGTERM must still reach it: a signal to the
/// group alone was lost then, and the stop waited out the whole stop budget until the SIGKILL.
/// </summary>
public sealed class CommandStopTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Told_to_stop_the_moment_it_starts_it_ends_by_its_SIGTERM_not_the_SIGKILL_after_the_budget(bool startedAhead)
    {
        var sleep = ProcessLauncher.FindProgram("sleep") ?? throw new InvalidOperationException("sleep is not on PATH");
        var shell = ProcessLauncher.FindProgram("sh") ?? throw new InvalidOperationException("sh is not on PATH");
        var leadership = new Leadership();
        for (var i = 0; i < 3; i++)
        {
            var outcomes = new List<CommandOutcome>();
            var child = new CommandChild(["sleep", "3600"], sleep, ProcessLauncher.Shared) { AfterExit = outcomes.Add };
            if (startedAhead)
            {
                child.PrepareAhead(shell, leadership.Name, leadership.NodeId, leadership.Namespace, now: true);
                await child.WhenPreparedAsync();
                child.PrepareNoMore();
            }

            using var stop = new CancellationTokenSource();
            // Told to stop synchronously as it is reported started (its pid known, the command maybe not running yet).
            await child.RunAsync(leadership, killAfter: TimeSpan.FromSeconds(10), stop.Token, running: stop.Cancel).WaitAsync(TimeSpan.FromSeconds(60));
            child.DiscardPrepared();

            var outcome = Assert.Single(outcomes);
            Assert.True(outcome.StoppedByUs);
            Assert.Equal(128 + Native.SigTerm, outcome.ExitCode); // 128 + SIGKILL: the SIGTERM was lost, the budget waited out
        }
    }

    [Fact]
    public async Task Escalated_the_moment_it_starts_it_is_killed_not_left_running()
    {
        var sleep = ProcessLauncher.FindProgram("sleep") ?? throw new InvalidOperationException("sleep is not on PATH");
        var leadership = new Leadership();
        for (var i = 0; i < 3; i++)
        {
            var outcomes = new List<CommandOutcome>();
            var child = new CommandChild(["sleep", "3600"], sleep, ProcessLauncher.Shared) { AfterExit = outcomes.Add };
            var escalation = new EscalationContext(leadership.Name, leadership.NodeId, "test", remainingLease: null);
            Task? killing = null;
            // The library's escalation (the lease about to pass) as it is reported started: its SIGKILL must reach it.
            var run = child.RunAsync(leadership, killAfter: TimeSpan.FromSeconds(10), CancellationToken.None, running: () => killing = child.KillNowAsync(escalation).AsTask());
            var failed = await Assert.ThrowsAsync<CommandFailedException>(() => run.WaitAsync(TimeSpan.FromSeconds(60)));
            Assert.Equal(128 + Native.SigKill, failed.ExitCode); // not told to stop: it exited by itself, killed
            await killing!.WaitAsync(TimeSpan.FromSeconds(60));
            Assert.False(Assert.Single(outcomes).StoppedByUs);
        }
    }

    private sealed class Leadership : ILeadership
    {
        public string Name => "stop-test";

        public string NodeId => "stop-test-node";

        public long Key => 1;

        public string Namespace => "highlander";

        public string FencingSchema => "highlander";

        public DateTimeOffset AcquiredAt { get; } = DateTimeOffset.UtcNow;

        public long? FencingEpoch => null;

        public CancellationToken LostToken => CancellationToken.None;
    }
}
