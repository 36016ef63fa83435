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

    [Fact]
    public async Task A_group_member_told_to_stop_the_moment_it_starts_ends_by_its_SIGTERM_not_the_SIGKILL_after_the_budget()
    {
        var shell = ProcessLauncher.FindProgram("sh") ?? throw new InvalidOperationException("sh is not on PATH");
        var directory = Directory.CreateTempSubdirectory("hl-group-stop-test-").FullName;
        try
        {
            for (var i = 0; i < 3; i++)
            {
                var group = new GroupSettings { Procfile = "Procfile", Members = [new GroupMember("worker", "exec sleep 3600", 1)], WorkingDirectory = directory, PrefixOutput = false };
                var settings = new RunSettings { Name = "stop-test", Command = [], ConnectionString = "Host=unused", Group = group };
                using var stop = new CancellationTokenSource();
                // Told to stop as its start is logged (its pid known, the member maybe not leading its group yet).
                var log = new LinesLogger(line => { if (line.StartsWith("Started member worker", StringComparison.Ordinal)) { stop.Cancel(); } });
                var child = new GroupChild(group, settings, shell, ProcessLauncher.Shared) { Logger = log };
                await child.RunAsync(new Leadership(), killAfter: TimeSpan.FromSeconds(10), stop.Token).WaitAsync(TimeSpan.FromSeconds(60));

                var exited = Assert.Single(log.Lines, l => l.StartsWith("Member worker (pid", StringComparison.Ordinal));
                Assert.Contains($"exited with code {128 + Native.SigTerm} after it was told to stop", exited, StringComparison.Ordinal); // 137: SIGTERM lost
            }
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    /// <summary>Keeps every formatted message, and shows each to <c>seen</c> as it is logged.</summary>
    private sealed class LinesLogger(Action<string> seen) : Microsoft.Extensions.Logging.ILogger
    {
        private readonly System.Collections.Concurrent.ConcurrentQueue<string> _lines = new();

        public IReadOnlyCollection<string> Lines => [.. _lines];

        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(Microsoft.Extensions.Logging.LogLevel logLevel) => true;

        public void Log<TState>(Microsoft.Extensions.Logging.LogLevel logLevel, Microsoft.Extensions.Logging.EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            var line = formatter(state, exception);
            _lines.Enqueue(line);
            seen(line);
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
