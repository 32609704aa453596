# CTest script: the R1 recipe end to end through a dsx-<model> tool, at a scale that checks the plumbing
# rather than the learning (tests/data/recipes/quick.json: the first four stages, a few steps each).
#   cmake -DTOOL=<dsx-model> -DDATA=<tests/data> -DWORK=<scratch folder> -P check_recipe.cmake
# Requires: the run succeeds and prints the stage table; report.json lists pretrain, r1-zero,
# cold-start-sft and grpo with rates in [0, 1]; report.html exists; each stage left metrics.jsonl and a
# checkpoint; a rerun skips every stage, and one with an earlier stop_after stops there; another recipe
# in the same folder is refused; a recipe with a field of the wrong type is refused with a message
# naming the file and the field. Then the per-stage
# subcommands run from the grpo checkpoint: evaluate, sft (on the recipe's cold-start JSONL), grpo,
# reward-model and dpo (on tests/data/recipes/pairs.jsonl), each leaving its metrics and checkpoint.
file(REMOVE_RECURSE "${WORK}")

function(run expect_rc out_var)
  execute_process(COMMAND "${TOOL}" recipe ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if((expect_rc EQUAL 0 AND NOT rc EQUAL 0) OR (NOT expect_rc EQUAL 0 AND rc EQUAL 0))
    message(FATAL_ERROR "recipe ${ARGN}: exit status ${rc}:\n${out}\n${err}")
  endif()
  set(${out_var} "${out}${err}" PARENT_SCOPE)
endfunction()

run(0 out --recipe "${DATA}/recipes/quick.json" --out "${WORK}/run")
if(NOT out MATCHES "pass@1")
  message(FATAL_ERROR "no stage table in the output:\n${out}")
endif()
file(READ "${WORK}/run/report.json" report)
string(JSON count LENGTH "${report}" stages)
if(NOT count EQUAL 4)
  message(FATAL_ERROR "report.json has ${count} stages, expected 4:\n${report}")
endif()
set(i 0)
foreach(name IN ITEMS pretrain r1-zero cold-start-sft grpo)
  string(JSON found GET "${report}" stages ${i} name)
  if(NOT found STREQUAL name)
    message(FATAL_ERROR "stage ${i} is '${found}', expected '${name}'")
  endif()
  foreach(key IN ITEMS pass_at_1 cons_at_k format_rate)
    string(JSON v GET "${report}" stages ${i} ${key})
    if(v LESS 0 OR v GREATER 1)
      message(FATAL_ERROR "stage ${name}: ${key} = ${v} is outside [0, 1]")
    endif()
  endforeach()
  if(NOT EXISTS "${WORK}/run/${name}/metrics.jsonl" OR NOT IS_DIRECTORY "${WORK}/run/${name}/checkpoint")
    message(FATAL_ERROR "stage ${name} left no metrics.jsonl or checkpoint in ${WORK}/run/${name}")
  endif()
  math(EXPR i "${i} + 1")
endforeach()
if(NOT EXISTS "${WORK}/run/report.html")
  message(FATAL_ERROR "no report.html beside report.json")
endif()

run(0 out --recipe "${DATA}/recipes/quick.json" --out "${WORK}/run")
foreach(name IN ITEMS pretrain r1-zero cold-start-sft grpo)
  if(NOT out MATCHES "== ${name}: done")
    message(FATAL_ERROR "the rerun did not skip stage ${name}:\n${out}")
  endif()
endforeach()

# The same recipe with an earlier stop_after continues the folder (nothing left to run).
run(0 out --recipe "${DATA}/recipes/quick-earlier-stop.json" --out "${WORK}/run")
if(NOT out MATCHES "== r1-zero: done" OR out MATCHES "== cold-start-sft")
  message(FATAL_ERROR "the rerun with stop_after r1-zero did not stop there:\n${out}")
endif()

run(1 out --out "${WORK}/run")
if(NOT out MATCHES "holds a run with other options")
  message(FATAL_ERROR "a different recipe in the same folder was not refused:\n${out}")
endif()

run(1 out --recipe "${DATA}/recipes/bad-field.json" --out "${WORK}/bad")
if(NOT out MATCHES "bad-field.json: field 'grpo.steps': expected a number, found a string")
  message(FATAL_ERROR "unexpected message for a bad recipe field:\n${out}")
endif()

# The per-stage subcommands, a step or two each, from the recipe's last checkpoint.
set(init "${WORK}/run/grpo/checkpoint")
function(tool expect)
  execute_process(COMMAND "${TOOL}" ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${ARGN}: exit status ${rc}:\n${out}\n${err}")
  endif()
  if(NOT "${out}" MATCHES "${expect}")
    message(FATAL_ERROR "${ARGN}: output does not match '${expect}':\n${out}")
  endif()
endfunction()
tool("pass@1" evaluate --init "${init}" --problems 1 --k 2 --nim-games 1 --max-new 16)
tool("checkpoint" sft --init "${init}" --data "${WORK}/run/data/cold_start.jsonl" --out "${WORK}/sft" --steps 2 --batch 2)
tool("checkpoint" grpo --init "${init}" --out "${WORK}/grpo" --steps 1 --prompts 1 --group 2 --max-new 8 --tasks nim)
tool("pair accuracy" reward-model --init "${init}" --data "${DATA}/recipes/pairs.jsonl" --out "${WORK}/rm" --steps 2 --batch 2)
tool("checkpoint" dpo --init "${init}" --data "${DATA}/recipes/pairs.jsonl" --out "${WORK}/dpo" --steps 2 --batch 2)
foreach(dir IN ITEMS sft grpo rm dpo)
  if(NOT EXISTS "${WORK}/${dir}/metrics.jsonl" OR NOT IS_DIRECTORY "${WORK}/${dir}/checkpoint")
    message(FATAL_ERROR "${dir}: no metrics.jsonl or checkpoint in ${WORK}/${dir}")
  endif()
endforeach()
