--[[ job_submit.lua: the hpc-aidc site policy for slurmctld (JobSubmitPlugins=lua; Lua 5.1 or later).
Rendered by `hpcai admin policy --out job_submit.lua` from the site profile: do not edit here, change the
profile's [policy] table and render again. The same rules, codes and messages are checked by hpcai
before it calls sbatch (hpc_aidc/spec/policy.py); the catalogue of codes is slurm/policy/README.md.
slurmctld reloads this file by itself when it changes (no restart needed once JobSubmitPlugins=lua). ]]

--@SITE@

-- Slurm's "not set" numbers (NO_VAL and INFINITE at 16, 32 and 64 bits).
local UNSET = { [4294967294] = true, [4294967295] = true, [65534] = true, [65535] = true,
                [18446744073709551614] = true, [18446744073709551615] = true }
local JOB_SHARED_NONE = 0  -- job_desc.shared for --exclusive (and `scontrol update OverSubscribe=no`)

-- The functions from here to check_partition have twins of the same names in hpc_aidc/spec/policy.py;
-- keep them line for line alike (tests/admin/test_policy.py runs both on the same fields).

local function given(v)
  return v ~= nil and v ~= "" and not UNSET[v]
end

-- A number Slurm set; nil when it is not set.
local function num(v)
  if given(v) and type(v) == "number" then return v end
  return nil
end

-- A count Slurm set (1 or more); nil otherwise (job records hold 0 for some counts never asked).
local function positive(v)
  local n = num(v)
  if n ~= nil and n >= 1 then return n end
  return nil
end

-- GPUs in a TRES string such as "gres:gpu:h100:2,gres:foo:1" (also "gres/gpu:2", "gpu"): count, type.
local function gpus_in(spec)
  if not given(spec) or type(spec) ~= "string" then return 0, nil end
  local total, kind = 0, nil
  for item in string.gmatch(spec, "[^,]+") do
    local s = string.gsub(item, "^gres[:/]", "", 1)
    local parts = {}
    for p in string.gmatch(s, "[^:]+") do parts[#parts + 1] = p end
    if parts[1] == "gpu" then
      local count = 1
      if #parts >= 3 then
        kind = parts[2]
        -- tonumber(nil) raises in Lua 5.1, and an error here would accept the job: never pass it nil
        count = tonumber(string.match(parts[3], "^[0-9]+") or "") or 1
      elseif #parts == 2 then
        local n = tonumber(string.match(parts[2], "^[0-9]+$") or "")
        if n then count = n else kind = parts[2] end
      end
      total = total + count
    end
  end
  return total, kind
end

local function say(name, values)
  local rule = SITE.rules[name]
  local text = string.gsub(rule.template, "{([%w_]+)}", function(k)
    local v = values[k]
    if v == nil then return "{" .. k .. "}" end
    return tostring(v)
  end)
  return rule.code .. ": " .. text
end

-- The request in a job_desc, as hpc_aidc.spec.policy.request_from_job_desc reads it: every GPU form summed,
-- a -N range at its top, --exclusive (shared == 0) as whole nodes, --mem=0 kept as 0 (all of each node's
-- memory). Memory is read from min_mem_per_node/min_mem_per_cpu, not pn_min_memory: its MEM_PER_CPU flag
-- is bit 63, which a Lua 5.1 number cannot hold next to the value.
local function request(job_desc)
  local nodes = math.max(positive(job_desc.min_nodes) or 1, positive(job_desc.max_nodes) or 0)
  local per_node, t1 = gpus_in(job_desc.tres_per_node)
  local per_job, t2 = gpus_in(job_desc.tres_per_job)
  local per_task, t3 = gpus_in(job_desc.tres_per_task)
  local per_socket, t4 = gpus_in(job_desc.tres_per_socket)
  local sockets = positive(job_desc.sockets_per_node) or 1
  local tasks_per_node = positive(job_desc.ntasks_per_node)
  local tasks = positive(job_desc.num_tasks) or (tasks_per_node or 1) * nodes
  if tasks_per_node == nil then tasks_per_node = math.ceil(tasks / nodes) end
  -- --gpus (per job) is a total; the other forms add up per node and per task. Take whichever is more.
  local node_gpus = per_node + per_socket * sockets
  local gpus = math.max(per_job, node_gpus * nodes + per_task * tasks)
  local gpus_per_node = math.max(node_gpus + per_task * tasks_per_node, math.ceil(gpus / nodes))
  local cpt = positive(job_desc.cpus_per_task) or 1
  local pn_min_cpus = positive(job_desc.pn_min_cpus) or 0
  local cpus_per_node = math.max(tasks_per_node * cpt, pn_min_cpus)
  local cpus = math.max(tasks * cpt, positive(job_desc.min_cpus) or 0, pn_min_cpus * nodes)
  local cpus_per_gpu = select(1, gpus_in(job_desc.cpus_per_tres))
  if cpus_per_gpu > 0 and gpus > 0 then
    cpus = math.max(cpus, cpus_per_gpu * gpus)
    cpus_per_node = math.max(cpus_per_node, cpus_per_gpu * gpus_per_node)
  end
  local mem = num(job_desc.min_mem_per_node)
  local mem_per_cpu = num(job_desc.min_mem_per_cpu)
  if mem == nil and mem_per_cpu ~= nil then mem = mem_per_cpu * cpus_per_node end
  local mem_per_gpu = select(1, gpus_in(job_desc.mem_per_tres))
  if mem == nil and mem_per_gpu > 0 then mem = mem_per_gpu * gpus_per_node end
  return {
    account = job_desc.account, partition = job_desc.partition, qos = job_desc.qos,
    time_given = given(job_desc.time_limit), nodes = nodes, gpus = gpus, gpus_per_node = gpus_per_node,
    gpu_type = t1 or t2 or t3 or t4, cpus = cpus, cpus_per_node = cpus_per_node, mem_per_node_mb = mem,
    exclusive = num(job_desc.shared) == JOB_SHARED_NONE,
  }
end

-- The fields of a job the rules read. A change (`scontrol update`) that sets none of them is not checked.
local FIELDS = { "account", "partition", "qos", "time_limit", "min_nodes", "max_nodes", "num_tasks",
  "ntasks_per_node", "cpus_per_task", "min_cpus", "pn_min_cpus", "sockets_per_node", "tres_per_node",
  "tres_per_job", "tres_per_task", "tres_per_socket", "cpus_per_tres", "mem_per_tres", "min_mem_per_node",
  "min_mem_per_cpu", "shared" }
-- An empty value clears these (`scontrol update TresPerNode=`): the job no longer has them.
local CLEARABLE = { qos = true, tres_per_node = true, tres_per_job = true, tres_per_task = true,
  tres_per_socket = true, cpus_per_tres = true, mem_per_tres = true }
-- One setting in Slurm (pn_min_memory): a change to either replaces both.
local MEMORY = { min_mem_per_node = true, min_mem_per_cpu = true }
-- What decides how many GPUs a job has. Slurm's job record lacks some of it (task and socket counts), so
-- when a change leaves all of it alone, the job keeps at least the GPUs slurmctld counted for it.
local GPU_SHAPE = { min_nodes = true, max_nodes = true, num_tasks = true, ntasks_per_node = true,
  sockets_per_node = true, tres_per_node = true, tres_per_job = true, tres_per_task = true,
  tres_per_socket = true, shared = true }

local function changed(change, field)
  local value = change[field]
  return given(value) or (value == "" and CLEARABLE[field] == true)
end

local function changes_any(change, fields)
  for _, f in ipairs(FIELDS) do
    if fields[f] and changed(change, f) then return true end
  end
  return false
end

local ALL = {}
for _, f in ipairs(FIELDS) do ALL[f] = true end

-- The job as it would be after `change` (slurm_job_modify's job_desc: only what the change sets) to the
-- job `record` (its job_rec); nil when the change sets nothing the rules read. A recorded 0 MB per node is
-- not read as --mem=0: Slurm records 0 for a job that gave no --mem, too (the site's default).
local function job_after_change(change, record)
  if not changes_any(change, ALL) then return nil end
  local memory_changed = changes_any(change, MEMORY)
  local job = {}
  for _, f in ipairs(FIELDS) do
    if changed(change, f) then
      if change[f] ~= "" then job[f] = change[f] end
    elseif not MEMORY[f] or not memory_changed then
      job[f] = record[f]
    end
  end
  if not memory_changed and job.min_mem_per_node == 0 then job.min_mem_per_node = nil end
  return job
end

-- The GPUs slurmctld counted for the job (gres/gpu in its requested TRES, e.g. "cpu=2,node=1,gres/gpu=4").
local function recorded_gpus(record)
  local text = record.tres_fmt_req_str
  if type(text) ~= "string" then return 0 end
  return tonumber(string.match("," .. text .. ",", ",gres/gpu=([0-9]+),") or "") or 0
end

-- The request of the job after the change (hpc_aidc.spec.policy.request_after_change); nil: not checked.
local function request_after_change(change, record)
  local job = job_after_change(change, record)
  if job == nil then return nil end
  local req = request(job)
  if not changes_any(change, GPU_SHAPE) then
    req.gpus = math.max(req.gpus, recorded_gpus(record))
    req.gpus_per_node = math.max(req.gpus_per_node, math.ceil(req.gpus / req.nodes))
  end
  return req
end

-- What the request holds on a partition (hpc_aidc.spec.policy.held_on): whole nodes with --exclusive, each
-- node's memory with --mem=0 (the profile's mem_per_node_mb; when it gives none, memory is not checked).
local function held_on(part, req)
  local mem = req.mem_per_node_mb
  if (req.exclusive or mem == 0) and part.mem_per_node_mb > 0 then
    mem = math.max(mem or 0, part.mem_per_node_mb)
  elseif mem == 0 then
    mem = nil
  end
  local gpus, cpus = req.gpus, req.cpus
  if req.exclusive then
    gpus = math.max(gpus, req.nodes * part.gpus_per_node)
    cpus = math.max(cpus, req.nodes * part.cpus_per_node)
  end
  return { gpus = gpus, cpus = cpus, mem_mb = mem and mem * req.nodes }
end

-- The first broken rule for one partition, in the order of hpc_aidc.spec.policy.RULES; nil if none.
local function check_partition(req, name)
  local part = SITE.partitions[name]
  if part == nil then return nil end  -- unknown partitions are Slurm's to refuse
  local function impossible(limit, got)
    return say("impossible-request", { limit = limit, partition = name, got = got })
  end
  if req.gpus > 0 and part.gpus_per_node == 0 then
    return say("gpus-on-cpu-partition", { partition = name, gpus = req.gpus, gpu_partitions = SITE.gpu_partitions })
  end
  if req.gpus == 0 and SITE.gpu_only[name] then
    return say("cpu-job-on-gpu-partition", { partition = name, cpu_partitions = SITE.cpu_partitions })
  end
  if req.nodes > part.nodes then return impossible(part.nodes .. " nodes", req.nodes .. " nodes") end
  if req.gpus_per_node > part.gpus_per_node then
    return impossible(part.gpus_per_node .. " GPUs per node", req.gpus_per_node .. " GPUs per node")
  end
  if req.cpus_per_node > part.cpus_per_node then
    return impossible(part.cpus_per_node .. " CPUs per node", req.cpus_per_node .. " CPUs per node")
  end
  if part.mem_per_node_mb > 0 and req.mem_per_node_mb ~= nil and req.mem_per_node_mb > part.mem_per_node_mb then
    return impossible(part.mem_per_node_mb .. " MB of memory per node", req.mem_per_node_mb .. " MB per node")
  end
  if not req.time_given and (SITE.require_time_all or SITE.require_time[name]) then
    return say("time-required", { partition = name, max_time = part.max_time })
  end
  local held = held_on(part, req)
  local qos = req.qos
  if not given(qos) then qos = SITE.default_qos end
  local cap = qos and SITE.qos_max_gpus[qos]
  if cap and held.gpus > cap then
    return say("qos-gpu-cap", { max = cap, qos = qos, gpus = held.gpus, others = SITE.qos_others[qos] })
  end
  local gpu_type = req.gpu_type or part.gpu_type
  local caps = gpu_type and SITE.gpu_caps[gpu_type]
  if held.gpus > 0 and caps then
    if caps.max_cpus_per_gpu and held.cpus > caps.max_cpus_per_gpu * held.gpus then
      return say("cpus-per-gpu", { max = caps.max_cpus_per_gpu, gpu_type = gpu_type, cpus = held.cpus, gpus = held.gpus })
    end
    local mem = held.mem_mb
    if caps.max_mem_per_gpu_mb and mem and mem > caps.max_mem_per_gpu_mb * held.gpus then
      return say("mem-per-gpu", { max = caps.max_mem_per_gpu_mb, gpu_type = gpu_type, mem = mem, gpus = held.gpus })
    end
  end
  return nil
end

-- The first broken rule for a request: nil (accept) or the one-line message.
local function verdict_for(req)
  if SITE.require_account and not given(req.account) then return say("account-required", {}) end
  local names = req.partition
  if not given(names) then names = SITE.default_partition end
  if names == nil then return nil end
  for name in string.gmatch(names, "[^,]+") do
    local refusal = check_partition(req, name)
    if refusal then return refusal end
  end
  return nil
end

-- The verdict for a job_desc: nil (accept) or the one-line message. Also used by the tests, which load
-- this file in a plain Lua interpreter with a stub `slurm` table.
function hpcai_policy_verdict(job_desc, submit_uid)
  if SITE.exempt_uids[submit_uid] then return nil end
  return verdict_for(request(job_desc))
end

-- The verdict for a change to a job (hpc_aidc.spec.policy.first_broken_change): the rules on the job as it
-- would be after it. Root (Slurm's own admin) and the exempt users may change anything.
function hpcai_policy_change_verdict(job_desc, job_rec, modify_uid)
  if modify_uid == 0 or SITE.exempt_uids[modify_uid] then return nil end
  local req = request_after_change(job_desc, job_rec)
  if req == nil then return nil end
  return verdict_for(req)
end

-- A bug here must not stop the cluster's submissions or changes: log it and accept.
local function checked(what, fn, ...)
  local ok, verdict = pcall(fn, ...)
  if ok then return verdict end
  slurm.log_error("hpc-aidc policy: %s check failed, accepted: %s", what, (string.gsub(tostring(verdict), "%c", "?")))
  return nil
end

-- The verdict quotes the request (partition, account names as the user typed them): no control character
-- of theirs may start a line of its own in slurmctld's log.
local function one_line(text)
  return (string.gsub(text, "%c", "?"))
end

function slurm_job_submit(job_desc, part_list, submit_uid)
  local verdict = checked("submission", hpcai_policy_verdict, job_desc, submit_uid)
  if verdict then
    slurm.log_info("hpc-aidc policy: refused a job of uid %s: %s", tostring(submit_uid), one_line(verdict))
    slurm.log_user("%s", verdict)
    return slurm.ERROR
  end
  return slurm.SUCCESS
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
  local verdict = checked("change", hpcai_policy_change_verdict, job_desc, job_rec, modify_uid)
  if verdict then
    slurm.log_info("hpc-aidc policy: refused a change to job %s of uid %s: %s", tostring(job_rec.job_id),
                   tostring(modify_uid), one_line(verdict))
    -- Slurm 22.05 does not pass log_user on from job_modify: it logs the text instead ("Message discarded"),
    -- so it goes one line too. Later Slurm shows it to the user, as for submissions.
    slurm.log_user("%s", one_line(verdict))
    -- scontrol shows this code's text ("Job violates accounting/QOS policy ...") where the message is lost
    return slurm.ESLURM_ACCOUNTING_POLICY or slurm.ERROR
  end
  return slurm.SUCCESS
end

return slurm.SUCCESS
