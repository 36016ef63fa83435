// The tests' separate node process: a HighlanderPG node whose one singleton ("ticker" unless TestNode__Singleton says
// otherwise) says when its child starts and stops. Configuration comes from environment variables only:
//   Highlander__*                           the node's HighlanderOptions (connection string, namespace, node id, timings)
//   TestNode__Singleton                     the singleton's name (default "ticker")
//   TestNode__IgnoreCancellation=true       a child that will not stop when told to (the default escalation ends us)
//   TestNode__StarveThreadPoolWhenFileExists=PATH   once PATH exists, every thread-pool thread blocks for good
//   TestNode__Messaging=true               a messaging node (AddHighlanderMessaging; set Highlander__Fencing=true and
//                                           Highlander__FencingSchema): the child processes its inbox with ProcessAsync,
//                                           writing each message's effect row to the table TestNode__Effects in the
//                                           acknowledging transaction (the messaging tests' effects table), no journal
//   TestNode__Journal=PATH                  the child journals its start and stop there (HighlanderPG.Testing's LifeJournal),
//                                           holding the journal's kernel lock (flock on PATH.lock) while it lives, as the
//                                           journal's script child does: a start that finds it taken journals an overlap
// Standard output: "STARTED <node> epoch=<n>" and "STOPPED <node>" (and "STARVING"), one line each, flushed at once.
// Standard error: every log message as "level category[event id] message", written synchronously, so the line of an
// escalation is out before the process ends itself.
using System.Globalization;
using HighlanderPG;
using HighlanderPG.Messaging;
using HighlanderPG.Testing.Journal;
using HighlanderPG.TestNodeProgram;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true, Args = args });
builder.Configuration.AddEnvironmentVariables();
builder.Logging.ClearProviders();
builder.Logging.SetMinimumLevel(LogLevel.Debug);
builder.Logging.AddFilter("Npgsql", LogLevel.Warning);
builder.Logging.AddFilter("Microsoft", LogLevel.Warning);
builder.Logging.AddProvider(new StderrLoggerProvider());
builder.Services.AddHighlander(builder.Configuration.GetSection("Highlander"));
var singleton = builder.Configuration["TestNode:Singleton"] ?? "ticker";
if (builder.Configuration.GetValue<bool>("TestNode:Messaging"))
{
    builder.Services.AddHighlanderMessaging(o =>
    {
        o.PollInterval = TimeSpan.FromSeconds(2);
        o.MaxDeliveries = 10_000; // the tests count redeliveries; nothing is dead-lettered
    });
    builder.Services.AddClusterSingleton<Processor>(singleton);
}
else
{
    builder.Services.AddClusterSingleton<Ticker>(singleton);
}

await builder.Build().RunAsync();

namespace HighlanderPG.TestNodeProgram
{
    /// <summary>The child: prints its start and stop, and ticks meanwhile; misbehaves when the test says so.</summary>
    internal sealed class Ticker(ILeadership leadership, IConfiguration configuration) : BackgroundService
    {
        protected override async Task ExecuteAsync(CancellationToken stoppingToken)
        {
            var journal = configuration["TestNode:Journal"] is { Length: > 0 } path ? new LifeJournal(path) : null;
            FileStream? alive = null;
            if (journal is not null)
            {
                // The kernel frees the lock only when this process is dead (even by SIGKILL or FailFast): the next child's
                // start witnesses that this one is gone, whenever the test gets to see the exit.
                alive = TryLock(journal.LockPath);
                if (alive is null)
                {
                    journal.Record(leadership.NodeId, leadership.Name, LifeKind.Overlap);
                    while ((alive = TryLock(journal.LockPath)) is null)
                    {
                        await Task.Delay(10, CancellationToken.None);
                    }
                }

                journal.Record(leadership.NodeId, leadership.Name, LifeKind.Started, KernelLockWitness, leadership.FencingEpoch);
            }

            Say($"STARTED {leadership.NodeId} epoch={leadership.FencingEpoch?.ToString(CultureInfo.InvariantCulture) ?? "-"}");
            try
            {
                var ignore = configuration.GetValue<bool>("TestNode:IgnoreCancellation");
                var starveFile = configuration["TestNode:StarveThreadPoolWhenFileExists"];
                var tick = starveFile is null ? TimeSpan.FromSeconds(1) : TimeSpan.FromMilliseconds(50);
                while (ignore || !stoppingToken.IsCancellationRequested)
                {
                    if (starveFile is not null && File.Exists(starveFile))
                    {
                        StarveThreadPool();
                    }

                    await Task.Delay(tick, ignore ? CancellationToken.None : stoppingToken).ContinueWith(_ => { }, TaskScheduler.Default);
                }
            }
            finally
            {
                // Journaled before the lock is freed, and both before the node may release its advisory lock.
                journal?.Record(leadership.NodeId, leadership.Name, LifeKind.Stopped);
                alive?.Dispose();
                Say($"STOPPED {leadership.NodeId}");
            }
        }

        /// <summary>The detail of a start witnessed by the journal's kernel lock (the test kit's JournalExtensions has the same).</summary>
        private const string KernelLockWitness = "flock";

        /// <summary>Takes the lock file exclusively (on Unix, FileShare.None is flock(LOCK_EX | LOCK_NB)), or null if another has it.</summary>
        private static FileStream? TryLock(string path)
        {
            try
            {
                return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException)
            {
                return null;
            }
        }

        private static void Say(string line)
        {
            Console.Out.WriteLine(line);
            Console.Out.Flush();
        }

        /// <summary>What sync-over-async does to an application at its worst: no thread-pool work item runs any more.</summary>
        private static void StarveThreadPool()
        {
            ThreadPool.GetMaxThreads(out _, out var io);
            if (!ThreadPool.SetMaxThreads(Environment.ProcessorCount, io))
            {
                Console.Error.WriteLine("could not cap the thread pool");
                Environment.Exit(70);
            }

            for (var i = 0; i < Environment.ProcessorCount; i++)
            {
                ThreadPool.UnsafeQueueUserWorkItem(static _ => Thread.Sleep(Timeout.Infinite), null);
            }

            Say("STARVING");
            Thread.Sleep(Timeout.Infinite); // this thread is one of the pool's too
        }
    }

    /// <summary>
    /// The messaging child: says when it starts, then processes its inbox, writing each message's effect (message id, its
    /// payload's N, the epoch, the node, the delivery) in the acknowledging transaction.
    /// </summary>
    internal sealed class Processor(ILeadership leadership, ISingletonInbox inbox, IConfiguration configuration) : BackgroundService
    {
        protected override async Task ExecuteAsync(CancellationToken stoppingToken)
        {
            var effects = configuration["TestNode:Effects"] ?? throw new InvalidOperationException("TestNode__Effects (the effects table) is required with TestNode__Messaging=true.");
            Console.Out.WriteLine($"STARTED {leadership.NodeId} epoch={leadership.FencingEpoch?.ToString(CultureInfo.InvariantCulture) ?? "-"}");
            Console.Out.Flush();
            await inbox.ProcessAsync(async (message, tx, ct) =>
            {
                await using var cmd = new Npgsql.NpgsqlCommand($"INSERT INTO {effects} (message_id, n, epoch, node, delivery) VALUES ($1, $2, $3, $4, $5)", tx.Connection, tx);
                cmd.Parameters.Add(new Npgsql.NpgsqlParameter<long> { TypedValue = message.Id });
                cmd.Parameters.Add(new Npgsql.NpgsqlParameter<int> { TypedValue = message.GetPayload<Item>().N });
                cmd.Parameters.Add(new Npgsql.NpgsqlParameter<long> { TypedValue = leadership.FencingEpoch!.Value });
                cmd.Parameters.Add(new Npgsql.NpgsqlParameter<string> { TypedValue = leadership.NodeId });
                cmd.Parameters.Add(new Npgsql.NpgsqlParameter<int> { TypedValue = message.Delivery });
                await cmd.ExecuteNonQueryAsync(ct);
            }, stoppingToken);
        }

        /// <summary>The messaging tests' payload (the same shape as theirs).</summary>
        private sealed record Item(int N);
    }

    /// <summary>One line per message on standard error, written on the logging thread (no queue that an ending process loses).</summary>
    internal sealed class StderrLoggerProvider : ILoggerProvider
    {
        private readonly Lock _gate = new();

        public ILogger CreateLogger(string categoryName) => new StderrLogger(this, categoryName);

        public void Dispose()
        {
        }

        private void Write(string category, LogLevel level, EventId eventId, string message, Exception? exception)
        {
            var line = string.Create(CultureInfo.InvariantCulture, $"{level} {category}[{eventId.Id}] {message}{(exception is null ? "" : ": " + exception.Message.ReplaceLineEndings(" "))}");
            lock (_gate)
            {
                Console.Error.WriteLine(line);
                Console.Error.Flush();
            }
        }

        private sealed class StderrLogger(StderrLoggerProvider provider, string category) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state)
                where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => logLevel != LogLevel.None;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
                provider.Write(category, logLevel, eventId, formatter(state, exception), exception);
        }
    }
}
