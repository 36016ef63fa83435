// A singleton group in an ordinary .NET host: several services under one lock and one fencing epoch. Run it several times
// against the same database: on exactly one instance the ledger, the mailer and the auditor run; the others wait. Try
//   Highlander__ConnectionString="Host=...;Username=...;Password=..." dotnet run --project samples/HighlanderPG.GroupSample
// The mailer fails once, a few seconds after it first starts: the group restarts it alone (one-for-one), on the same
// node, under the same epoch, while the ledger keeps running.
using HighlanderPG;
using HighlanderPG.Groups;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

var builder = Host.CreateApplicationBuilder(args);
builder.Services.AddHighlander(builder.Configuration.GetSection("Highlander"));
var mailerRuns = 0;
builder.Services.AddClusterSingletonGroup("billing", g => g
    .Add<Ledger>("ledger")                                  // a hosted service type, created through DI for each run
    .Add("mailer", async (leadership, services, ct) =>      // a delegate
    {
        if (Interlocked.Increment(ref mailerRuns) == 1)
        {
            await Task.Delay(TimeSpan.FromSeconds(3), ct);
            throw new InvalidOperationException("the mail server hung up");
        }

        await Task.Delay(Timeout.Infinite, ct).ContinueWith(_ => { }, TaskScheduler.Default);
    })
    .Add("auditor", async (leadership, services, ct) =>
        await Task.Delay(Timeout.Infinite, ct).ContinueWith(_ => { }, TaskScheduler.Default), MemberRestart.Transient)
    .Strategy(GroupStrategy.OneForOne)
    .Intensity(maxRestarts: 3, window: TimeSpan.FromSeconds(30)));

var app = builder.Build();
var singletons = app.Services.GetRequiredService<IClusterSingletons>();
singletons.MemberChanged += (_, change) =>
    Console.WriteLine($"MEMBER {change.Group}/{change.Member}: {change.Previous} -> {change.Current} ({change.Reason}) epoch={change.FencingEpoch?.ToString() ?? "-"}");
singletons.StateChanged += (_, change) =>
{
    if (change.Current == SingletonState.Leading && change.Previous != change.Current && singletons.GetGroup(change.Name) is { } group)
    {
        Console.WriteLine($"GROUP {group}: {string.Join(", ", group.Members.Select(m => $"{m.Name}={m.State}"))}");
    }
};
await app.RunAsync();

/// <summary>A member given as a type: it takes the group's leadership (one epoch for every member).</summary>
internal sealed class Ledger(ILeadership leadership) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        Console.WriteLine($"LEDGER STARTED {leadership.NodeId} epoch={leadership.FencingEpoch?.ToString() ?? "-"}");
        await Task.Delay(Timeout.Infinite, stoppingToken).ContinueWith(_ => { }, TaskScheduler.Default);
        Console.WriteLine($"LEDGER STOPPED {leadership.NodeId}");
    }
}
