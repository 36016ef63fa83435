// The fault run of HighlanderPG (issue 9): see docs/fault-run.md and README "Fault run".
//   dotnet run -c Release --project tools/HighlanderPG.FaultRun -- [--seed N] [--nodes 5] [--singletons 50]
//       [--faults K | --duration D] [--connection CS] [--report DIR] [--smoke] [--lease 2s] [--cli-hosts 2] [--cli-singletons 3]
// Hidden modes (started by the run itself): `node` (a library node) and `child` (the command of `highlander run`).
// Offline: `--check-only DIR [--report OUT]` re-runs the checker over a recorded run (DIR/report.json, DIR/run/history).
using HighlanderPG.FaultRun;

return args.FirstOrDefault() switch
{
    "node" => await NodeMode.RunAsync(),
    "child" => await ChildMode.RunAsync(),
    "--check-only" => OfflineCheck.Run(args),
    _ => await Coordinator.MainAsync(args),
};
