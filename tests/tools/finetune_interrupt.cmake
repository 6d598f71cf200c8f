# tests/tools/finetune_interrupt.cmake — kvcar-finetune stopped by SIGINT saves its weights and
# exits with 130 (examples/tools/finetune.cpp). Run by the ctest entry tools.finetune_interrupt:
#
#   cmake -DCALIBRATE=... -DFINETUNE=... -DMODEL=... -DTEXT=... -DWORK=... -P finetune_interrupt.cmake
#
# A small autoencoder codec file is calibrated first; fine-tuning it with no end in sight is then
# interrupted after a few seconds by `timeout -s INT`.
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
execute_process(COMMAND ${CALIBRATE} --model ${MODEL} --text ${TEXT} --max-tokens 1000
                        --codec autoencoder --layers 0 --epochs 1 --train-rows 400 --quiet
                        --out ${WORK}/ae.kvc
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "calibration failed (${rc}):\n${out}${err}")
endif()
execute_process(COMMAND timeout --preserve-status -s INT 8
                        ${FINETUNE} --model ${MODEL} --codec-file ${WORK}/ae.kvc
                        --out ${WORK}/ft.kvc --text ${TEXT} --ctx 16 --eval-windows 0
                        --steps 100000000 --quiet --json
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 130)
  message(FATAL_ERROR "exit status ${rc}, expected 130:\n${out}${err}")
endif()
if(NOT err MATCHES "stopped by signal 2 after [0-9]+ steps; saved the weights")
  message(FATAL_ERROR "no 'stopped by signal' line:\n${err}")
endif()
if(NOT out MATCHES "\"interrupted_by_signal\":2")
  message(FATAL_ERROR "no JSON report of the interruption:\n${out}")
endif()
if(NOT EXISTS ${WORK}/ft.kvc)
  message(FATAL_ERROR "${WORK}/ft.kvc was not saved")
endif()
file(REMOVE_RECURSE ${WORK})
